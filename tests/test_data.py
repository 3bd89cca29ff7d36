"""The data layer: generators, analytic mixtures, packaged images, checksummed downloads."""
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_archives import write_cifar10_archive, write_mnist_archives

from flowrepro import cli
from flowrepro import io as fio
from flowrepro.data import images
from flowrepro.data.download import ChecksumError, Resource, download, mirror_url
from flowrepro.data.gmm import mixture
from flowrepro.stages import acquire

CIFAR = images.CIFAR10_FILE[0]


@pytest.mark.parametrize("name", ["moons", "8gaussians", "checkerboard", "spirals", "gmm2d", "gmm16d"])
def test_toy_datasets_are_deterministic_and_finite(name):
    a = acquire.make_dataset(name, n_train=500, n_test=100, seed=3)
    b = acquire.make_dataset(name, n_train=500, n_test=100, seed=3)
    assert a["train"].shape[0] == 500 and a["test"].shape[0] == 100
    assert np.isfinite(a["train"]).all()
    np.testing.assert_array_equal(a["train"], b["train"])
    assert not np.array_equal(a["train"], acquire.make_dataset(name, 500, 100, seed=4)["train"])


def test_checkerboard_occupies_only_black_squares():
    x = acquire.make_dataset("checkerboard", 5000, 10)["train"]
    assert ((np.floor(x[:, 0]) + np.floor(x[:, 1])) % 2 == 0).all()


@pytest.mark.parametrize("name", ["gmm2d", "gmm16d"])
def test_mixture_velocity_matches_monte_carlo(name):
    """v(x, t) = E[x1 - x0 | x_t = x]: estimate it by binning-free kernel regression near a point."""
    g = mixture(name)
    rng = np.random.default_rng(0)
    t = 0.7
    x1 = g.sample(400_000, rng)
    x0 = rng.standard_normal(x1.shape).astype(np.float32)
    xt = (1 - t) * x0 + t * x1
    v = g.velocity(torch.from_numpy(xt), t).numpy()
    residual = (x1 - x0) - v
    # The regression residual is orthogonal to any function of x_t, and mean zero.
    assert np.abs(residual.mean(0)).max() < 0.02
    features = np.concatenate([xt, np.sin(xt)], axis=1)[:, :6]
    assert np.abs(residual.T @ features / len(xt)).max() < 0.03
    # A wrong velocity (off by 10%) leaves a clearly non-zero correlation.
    wrong = (x1 - x0) - 0.9 * v
    assert np.abs(wrong.T @ features / len(xt)).max() > 0.1


def test_mixture_score_and_velocity_are_consistent():
    g = mixture("gmm16d")
    x = torch.from_numpy(g.sample(16, np.random.default_rng(1)))
    t = 0.4
    e_x0 = -(1 - t) * g.score(x, t)  # Tweedie for the Gaussian source
    v_from_score = (x - (1 - t) * e_x0) / t - e_x0
    torch.testing.assert_close(v_from_score, g.velocity(x, t), rtol=1e-4, atol=1e-4)


def test_packaged_image_datasets():
    d = images.digits()
    assert d["train"].shape[1:] == (1, 8, 8) and len(d["train"]) + len(d["test"]) == 1797
    m = images.mnist5k()
    assert m["train"].shape[1:] == (1, 28, 28) and len(m["train"]) + len(m["test"]) == 5000
    for arrays in (d, m):
        assert arrays["train"].min() >= -1 and arrays["train"].max() <= 1
        assert set(np.unique(arrays["train_labels"])) == set(range(10))


def test_acquire_writes_npz_and_checksum(tmp_path):
    out = tmp_path / "moons.npz"
    acquire.run("moons", str(out), 100, 50, 0, str(tmp_path / "dl"), None)
    sidecar = (tmp_path / "moons.npz.sha256").read_text().split()
    assert sidecar == [fio.sha256_file(out), "moons.npz"]
    assert fio.load_npz(out)["train"].shape == (100, 2)


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(KeyError, match="moons"):
        acquire.make_dataset("mnits")


# --- downloads against a local HTTP server -------------------------------------------------

def test_fake_archives_import_from_a_test_file():
    # Other test modules rely on this import path (pytest's rootdir-based sys.path for tests/).
    import fake_archives

    assert fake_archives.write_mnist_archives is write_mnist_archives


def test_mnist_download_verifies_and_parses(server, tmp_path):
    root, url = server
    digests = write_mnist_archives(root, n_train=6, n_test=3, seed=0)
    # The published-digest table can be replaced whole (files=) as well as per file (digests=).
    files = {key: (name, digests[name]) for key, (name, _) in images.MNIST_FILES.items()}
    out = images.mnist(tmp_path / "dl", mirror=url, files=files, pad_to=28)
    source = images.read_idx(root / images.MNIST_FILES["train_images"][0])
    labels = images.read_idx(root / images.MNIST_FILES["test_labels"][0])
    assert out["train"].shape == (6, 1, 28, 28) and out["test_labels"].tolist() == labels.tolist()
    np.testing.assert_allclose(out["train"][0, 0], source[0] / 255 * 2 - 1, atol=1e-6)


def test_cifar_download_verifies_and_parses(server, tmp_path):
    root, url = server
    (name, md5), = write_cifar10_archive(root, n_train=20, n_test=4, seed=1).items()
    out = images.cifar10(tmp_path / "dl", mirror=url, file=(name, md5))
    assert out["train"].shape == (20, 3, 32, 32) and out["test"].shape == (4, 3, 32, 32)


def test_fake_cifar_archive_has_the_real_layout(tmp_path):
    write_cifar10_archive(tmp_path, n_train=7, n_test=2)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        batches = {Path(n).name: pickle.load(tar.extractfile(m), encoding="bytes")
                   for n, m in members.items() if not n.endswith(".meta")}
    assert sorted(batches) == [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    sizes = [len(batches[f"data_batch_{i}"][b"labels"]) for i in range(1, 6)]
    assert sum(sizes) == 7 and min(sizes) >= 1 and len(batches["test_batch"][b"labels"]) == 2
    first = batches["data_batch_1"]
    assert first[b"data"].dtype == np.uint8 and first[b"data"].shape == (sizes[0], 3072)
    assert all(type(v) is int and 0 <= v < 10 for v in first[b"labels"])


def test_mnist_is_padded_to_32_with_background():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 28, 28)).astype(np.float32)
    padded = images.pad_images(x, 32)
    assert padded.shape == (2, 1, 32, 32)
    np.testing.assert_array_equal(padded[..., 2:30, 2:30], x)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (padded[..., border] == -1).all()
    with pytest.raises(ValueError, match="28x28.*33x33"):
        images.pad_images(x, 33)


def test_digest_overrides_choose_the_algorithm_by_length(server, tmp_path):
    root, url = server
    write_cifar10_archive(root, n_train=5, n_test=1)
    sha = hashlib.sha256((root / CIFAR).read_bytes()).hexdigest()
    out = images.cifar10(tmp_path / "dl", mirror=url, digests={CIFAR: sha.upper()})
    assert out["train"].shape == (5, 3, 32, 32)
    with pytest.raises(ValueError, match=f"{CIFAR}.*'abc123'.*md5.*sha256"):
        images.cifar10(tmp_path / "dl2", mirror=url, digests={CIFAR: "abc123"})
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz.*cifar-10-python.tar.gz"):
        images.cifar10(tmp_path / "dl2", mirror=url, digests={"t10k-images-idx3-ubyte.gz": "0" * 32})
    with pytest.raises(ValueError, match="moons downloads no files"):
        acquire.make_dataset("moons", 10, 10, digests={CIFAR: "0" * 32})
    assert not (tmp_path / "dl2").exists()


def _acquire(*args: str) -> int:
    return cli.main(["acquire", *args])


def test_cli_acquires_cifar10_from_a_local_mirror(server, tmp_path):
    root, url = server
    (name, md5), = write_cifar10_archive(root, n_train=10, n_test=3).items()
    out = tmp_path / "data" / "cifar10.npz"
    assert _acquire("--dataset", "cifar10", "--out", str(out), "--download-dir", str(tmp_path / "dl"),
                    "--mirror", url, "--digest", f"{name}={md5}") == 0
    arrays = fio.load_npz(out)
    assert arrays["train"].shape == (10, 3, 32, 32) and arrays["test"].shape == (3, 3, 32, 32)
    assert arrays["train"].dtype == np.float32 and arrays["train"].min() >= -1 and arrays["train"].max() <= 1
    assert arrays["train_labels"].shape == (10,) and set(arrays["test_labels"].tolist()) <= set(range(10))
    assert (out.parent / "cifar10.npz.sha256").read_text().split() == [fio.sha256_file(out), "cifar10.npz"]


def test_cli_acquires_mnist_padded_to_32(server, tmp_path):
    root, url = server
    digests = write_mnist_archives(root, n_train=8, n_test=4, seed=2)
    out = tmp_path / "data" / "mnist.npz"
    flags = [arg for name, md5 in digests.items() for arg in ("--digest", f"{name}={md5}")]
    assert _acquire("--dataset", "mnist", "--out", str(out), "--download-dir", str(tmp_path / "dl"),
                    "--mirror", url, *flags) == 0
    arrays = fio.load_npz(out)
    assert arrays["train"].shape == (8, 1, 32, 32) and arrays["test"].shape == (4, 1, 32, 32)
    for split in ("train", "test"):
        source = images.read_idx(root / images.MNIST_FILES[f"{split}_images"][0])
        border = np.ones((32, 32), bool)
        border[2:30, 2:30] = False
        assert (arrays[split][:, 0, border] == -1).all()
        np.testing.assert_allclose(arrays[split][:, 0, 2:30, 2:30], source / 255 * 2 - 1, atol=1e-6)
        labels = images.read_idx(root / images.MNIST_FILES[f"{split}_labels"][0])
        assert arrays[f"{split}_labels"].tolist() == labels.tolist()
    assert (out.parent / "mnist.npz.sha256").exists()


def test_cli_wrong_digest_names_file_and_digests_and_leaves_nothing(server, tmp_path):
    root, url = server
    (name, md5), = write_cifar10_archive(root, n_train=5, n_test=1).items()
    wrong = "f" * 32
    out, download_dir = tmp_path / "data" / "cifar10.npz", tmp_path / "dl"
    with pytest.raises(ChecksumError, match=f"{url}{name}.*expected {wrong}, got {md5}"):
        _acquire("--dataset", "cifar10", "--out", str(out), "--download-dir", str(download_dir),
                 "--mirror", url, "--digest", f"{name}={wrong}")
    assert list(download_dir.iterdir()) == []
    assert not out.exists() and not out.with_name("cifar10.npz.sha256").exists()


@pytest.mark.parametrize("entry, message", [
    ("cifar-10-python.tar.gz", "expected FILENAME=HEX"),
    ("=0123", "expected FILENAME=HEX"),
    ("cifar-10-python.tar.gz=xyz", "cifar-10-python.tar.gz: 'xyz' is neither an md5"),
    ("cifar-10-python.tar.gz=" + "g" * 32, "neither an md5"),
    ("train-images-idx3-ubyte.gz=" + "0" * 32, "train-images-idx3-ubyte.gz.*cifar10 does not download.*"
                                               "cifar-10-python.tar.gz"),
])
def test_cli_rejects_bad_digest_entries_before_downloading(tmp_path, capsys, entry, message):
    out, download_dir = tmp_path / "cifar10.npz", tmp_path / "dl"
    # The mirror is unreachable: a download attempt would fail differently (and slowly).
    with pytest.raises(SystemExit, match=message):
        _acquire("--dataset", "cifar10", "--out", str(out), "--download-dir", str(download_dir),
                 "--mirror", "http://127.0.0.1:9/", "--digest", entry)
    assert not out.exists() and not download_dir.exists()


def test_cli_rejects_conflicting_digests_for_one_file(tmp_path):
    with pytest.raises(SystemExit, match=f"two different digests for {CIFAR}"):
        _acquire("--dataset", "cifar10", "--out", str(tmp_path / "c.npz"), "--mirror", "http://127.0.0.1:9/",
                 "--digest", f"{CIFAR}={'0' * 32}", "--digest", f"{CIFAR}={'1' * 32}")


@pytest.mark.parametrize("as_url", [False, True], ids=["directory", "file-url"])
def test_cli_local_directory_mirror(tmp_path, as_url):
    mirror = tmp_path / "local copy"  # a space: the file:// URL must be quoted properly
    (name, md5), = write_cifar10_archive(mirror, n_train=5, n_test=2).items()
    out = tmp_path / "data" / "cifar10.npz"
    source = mirror.as_uri() if as_url else str(mirror)
    assert _acquire("--dataset", "cifar10", "--out", str(out), "--download-dir", str(tmp_path / "dl"),
                    "--mirror", source, "--digest", f"{name}={md5}") == 0
    assert fio.load_npz(out)["train"].shape == (5, 3, 32, 32)
    assert (tmp_path / "dl" / name).read_bytes() == (mirror / name).read_bytes()


def test_file_url_missing_file_fails_once_and_cleanly(tmp_path):
    (tmp_path / "dl").mkdir()
    url = mirror_url(tmp_path / "empty") + "none.bin"
    with pytest.raises(RuntimeError, match="after 1 attempt:"):
        download(Resource(url, "none.bin", "0" * 32), tmp_path / "dl", backoff_s=60)
    assert list((tmp_path / "dl").iterdir()) == []


def test_mirror_url_normalises_urls_and_paths(tmp_path):
    assert mirror_url("http://host/mnist") == "http://host/mnist/"
    assert mirror_url("http://host/mnist/") == "http://host/mnist/"
    assert mirror_url(tmp_path) == tmp_path.resolve().as_uri() + "/"


def test_bad_checksum_raises_and_leaves_no_file(server, tmp_path):
    root, url = server
    (root / "f.bin").write_bytes(b"tampered content")
    target_dir = tmp_path / "dl"
    with pytest.raises(ChecksumError, match="f.bin.*expected 0{32}"):
        download(Resource(url + "f.bin", "f.bin", "0" * 32), target_dir, retries=2, backoff_s=0)
    assert list(target_dir.iterdir()) == []


def test_unreachable_url_retries_then_fails_cleanly(tmp_path):
    with pytest.raises(RuntimeError, match="after 2 attempts"):
        download(Resource("http://127.0.0.1:9/none", "none", "0" * 32), tmp_path, retries=2, backoff_s=0, timeout_s=2)
    assert list(tmp_path.iterdir()) == []


def test_existing_verified_file_is_not_downloaded_again(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    # The URL is unreachable: success proves the verified local copy was used.
    path = download(Resource("http://127.0.0.1:9/f", "f", hashlib.md5(b"abc").hexdigest()), tmp_path, retries=1)
    assert path.read_bytes() == b"abc"

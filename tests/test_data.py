"""The data layer: generators, analytic mixtures, packaged images, checksummed downloads."""
import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
from functools import partial

import numpy as np
import pytest
import torch

from flowrepro import io as fio
from flowrepro.data import images
from flowrepro.data.download import ChecksumError, Resource, download
from flowrepro.data.gmm import mixture
from flowrepro.stages import acquire


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

def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def _cifar_archive(rng) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 4))}
            payload = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_mnist_download_verifies_and_parses(server, tmp_path):
    root, url = server
    rng = np.random.default_rng(0)
    contents = {"train_images": rng.integers(0, 256, (6, 28, 28)), "train_labels": rng.integers(0, 10, 6),
                "test_images": rng.integers(0, 256, (3, 28, 28)), "test_labels": rng.integers(0, 10, 3)}
    files = {}
    for key, array in contents.items():
        data = _idx(array)
        name = images.MNIST_FILES[key][0]
        (root / name).write_bytes(data)
        files[key] = (name, hashlib.md5(data).hexdigest())
    out = images.mnist(tmp_path / "dl", mirror=url, files=files)
    assert out["train"].shape == (6, 1, 28, 28) and out["test_labels"].tolist() == contents["test_labels"].tolist()
    np.testing.assert_allclose(out["train"][0, 0], contents["train_images"][0] / 255 * 2 - 1, atol=1e-6)


def test_cifar_download_verifies_and_parses(server, tmp_path):
    root, url = server
    data = _cifar_archive(np.random.default_rng(1))
    (root / "cifar.tar.gz").write_bytes(data)
    out = images.cifar10(tmp_path / "dl", mirror=url, file=("cifar.tar.gz", hashlib.md5(data).hexdigest()))
    assert out["train"].shape == (20, 3, 32, 32) and out["test"].shape == (4, 3, 32, 32)


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

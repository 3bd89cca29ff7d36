"""Acquirable weights: the pinned table, acquire through the real download code from a local HTTP server,
manifests, refusal of unpinned files, and of corrupted or malicious files before anything uses them.

The files are generated in the real formats (tests/fake_weights.py); since their digests differ from the
published ones, they are passed as overrides, as the smoke scale does for its archives."""
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from fake_weights import random_inception_in, sha256_file, write_tiny_ddpm
from flowrepro import cli, io
from flowrepro.data import weights
from flowrepro.data.download import ChecksumError, DigestError
from flowrepro.data.weights import FID_INCEPTION_FILE

SAFETENSORS, BIN = "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"


@pytest.fixture
def inception_www(server, tmp_path_factory):
    """The session's random full-size Inception file served under the published name; (www, url, sha256)."""
    root, url = server
    _, sha256 = random_inception_in(root, tmp_path_factory)
    return root, url, sha256


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_table_pins_what_it_can_and_says_what_it_cannot():
    fid = weights.WEIGHTS["fid_inception"]
    (file,) = fid.files
    # torch.hub's convention: the name carries the first 8 hex digits of the file's sha256
    assert file.name == FID_INCEPTION_FILE and re.fullmatch(r"[0-9a-f]{64}", file.sha256)
    assert file.name.endswith(f"-{file.sha256[:8]}.pth")
    assert fid.base_url.startswith("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/")
    ddpm = weights.WEIGHTS["ddpm_cifar10_pretrained"]
    assert re.search(r"/resolve/[0-9a-f]{40}/$", ddpm.base_url)  # a revision, not a branch that can move
    assert all(f.sha256 is None for f in ddpm.candidates())  # not found offline: never invented
    assert [f.name for f in ddpm.one_of] == [SAFETENSORS, BIN]  # safetensors preferred to the pickle
    schema = yaml.safe_load((Path(weights.__file__).parents[1] / "schemas/scale.schema.yaml").read_text())
    assert schema["properties"]["downloads"]["properties"]["weights"]["items"]["enum"] == list(weights.WEIGHTS)


def test_acquire_fetches_checks_and_writes_a_sha256sum_manifest(inception_www, tmp_path):
    root, url, sha256 = inception_www
    out = tmp_path / "data/weights/fid_inception"
    assert cli.main(["acquire", "--weights", "fid_inception", "--out", str(out), "--mirror", url,
                     "--digest", f"{FID_INCEPTION_FILE}={sha256}"]) == 0
    manifest = out / "fid_inception.sha256"
    assert manifest.read_text() == f"{sha256}  {FID_INCEPTION_FILE}\n"
    assert sha256_file(out / FID_INCEPTION_FILE) == sha256 and sorted(p.name for p in out.iterdir()) == sorted(
        [FID_INCEPTION_FILE, manifest.name])  # no partial file left
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--check", "--strict", manifest.name], cwd=out, check=True, capture_output=True)
    assert weights.read_verified(out / FID_INCEPTION_FILE) == (root / FID_INCEPTION_FILE).read_bytes()


def test_a_local_directory_stands_in_for_the_public_address(tmp_path, tmp_path_factory):
    mirror = tmp_path / "mirror"
    _, sha256 = random_inception_in(mirror, tmp_path_factory)
    manifest = weights.acquire("fid_inception", tmp_path / "w/fid_inception", mirror=str(mirror),
                               digests={FID_INCEPTION_FILE: sha256})
    assert weights.read_manifest(manifest.parent) == {FID_INCEPTION_FILE: sha256}


def test_a_file_whose_hash_differs_from_the_pin_is_refused_and_nothing_is_written(inception_www, tmp_path):
    root, url, sha256 = inception_www
    out = tmp_path / "fid_inception"
    with pytest.raises(ChecksumError) as error:  # the pinned (published) hash, not the generated file's
        weights.acquire("fid_inception", out, mirror=url, retries=1)
    message = str(error.value)
    assert FID_INCEPTION_FILE in message and weights.WEIGHTS["fid_inception"].files[0].sha256 in message and sha256 in message
    assert not out.exists() or not any(out.iterdir())


def test_unpinned_files_are_refused_before_any_download_naming_them_and_how_to_get_a_digest(server, tmp_path, capsys):
    root, url = server
    write_tiny_ddpm(root)
    out = tmp_path / "ddpm"
    with pytest.raises(weights.UnpinnedFileError) as error:
        weights.acquire("ddpm_cifar10_pretrained", out, mirror=url)
    message = str(error.value)
    for name in ("config.json", "scheduler_config.json", SAFETENSORS, BIN, "--digest", "sha256sum", "first use"):
        assert name in message, name
    assert not out.exists()  # nothing fetched: a file is never trusted on first use
    digests = {"config.json": sha256_file(root / "config.json")}  # one digest given, two still missing
    with pytest.raises(SystemExit, match="no sha256 is pinned for scheduler_config.json, diffusion_pytorch_model"):
        cli.main(["acquire", "--weights", "ddpm_cifar10_pretrained", "--out", str(out), "--mirror", url,
                  *[f"--digest={k}={v}" for k, v in digests.items()]])
    assert not out.exists()


def test_malformed_or_foreign_digests_are_usage_errors():
    with pytest.raises(DigestError, match="pinned by sha256"):
        weights.digests_for("fid_inception", {FID_INCEPTION_FILE: "0" * 32})  # an md5 is not enough here
    with pytest.raises(DigestError, match="cifar-10-python.tar.gz.*its files are weights-inception"):
        weights.digests_for("fid_inception", {"cifar-10-python.tar.gz": "0" * 64})
    with pytest.raises(KeyError, match="fid_inception, ddpm_cifar10_pretrained"):
        weights.digests_for("inception_v4")


def _served_ddpm(root: Path, tmp_path: Path, formats: tuple[str, ...]) -> dict[str, str]:
    """A tiny DDPM in both formats; the files of ``formats`` (and the configs) served; their digests."""
    safe, pickled = tmp_path / "made_safe", tmp_path / "made_bin"
    digests = write_tiny_ddpm(safe, safetensors=True) | write_tiny_ddpm(pickled, safetensors=False)
    for name in ("config.json", "scheduler_config.json", *formats):
        shutil.copyfile((safe if name != BIN else pickled) / name, root / name)
    return {name: digests[name] for name in ("config.json", "scheduler_config.json", *formats)}


@pytest.mark.parametrize("formats,expected", [((SAFETENSORS, BIN), SAFETENSORS), ((BIN,), BIN)])
def test_pretrained_ddpm_is_acquired_and_loads_from_checked_bytes(server, tmp_path, formats, expected):
    import torch
    from diffusers import UNet2DModel

    from flowrepro.models.pretrained import load_pretrained_unet

    root, url = server
    digests = _served_ddpm(root, tmp_path, formats)
    out = tmp_path / "data/weights/ddpm_cifar10_pretrained"
    assert cli.main(["acquire", "--weights", "ddpm_cifar10_pretrained", "--out", str(out), "--mirror", url,
                     *[f"--digest={k}={v}" for k, v in digests.items()]]) == 0
    assert set(weights.read_manifest(out)) == {"config.json", "scheduler_config.json", expected}  # one format only
    unet, scheduler = load_pretrained_unet(out)
    reference = UNet2DModel.from_pretrained(tmp_path / "made_safe").eval()
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t).sample, reference(x, t).sample, rtol=0, atol=0)
    assert scheduler["_class_name"] == "DDPMScheduler" and scheduler["num_train_timesteps"] == 1000


class _Payload:
    """Unpickling this calls Path.touch on the marker: code run by merely loading a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_pickle_bin_that_runs_code_is_refused_even_with_its_digest(server, tmp_path):
    from flowrepro.models.pretrained import load_pretrained_unet

    root, url = server
    digests = _served_ddpm(root, tmp_path, (BIN,))
    marker = tmp_path / "pwned"
    (root / BIN).write_bytes(pickle.dumps({"conv_in.weight": _Payload(marker)}, protocol=2))
    digests[BIN] = sha256_file(root / BIN)  # the user vouched for it: the checksum passes, the loader still refuses
    out = tmp_path / "ddpm"
    weights.acquire("ddpm_cifar10_pretrained", out, mirror=url, digests=digests)
    with pytest.raises(pickle.UnpicklingError, match="(?i)weights only"):
        load_pretrained_unet(out)
    assert not marker.exists()


def test_corrupted_or_swapped_weights_are_refused_before_any_use(inception_www, tmp_path):
    from flowrepro.metrics.inception import load_fid_inception
    from flowrepro.models.pretrained import load_pretrained_unet

    root, url, sha256 = inception_www
    out = tmp_path / "data/weights/fid_inception"
    weights.acquire("fid_inception", out, mirror=url, digests={FID_INCEPTION_FILE: sha256})
    path = out / FID_INCEPTION_FILE
    flip_byte(path, path.stat().st_size // 2)  # inside a tensor: torch.load alone would not notice
    actual = sha256_file(path)
    pattern = rf"{re.escape(str(path))}: sha256 {actual} does not match {sha256}"
    with pytest.raises(io.ChecksumMismatch, match=pattern):
        load_fid_inception(path)
    with pytest.raises(io.ChecksumMismatch, match=pattern):  # the workflow's stage, by its CLI, before the data
        cli.main(["fid-reference", "--data", str(tmp_path / "unused.npz"), "--inception-weights", str(path),
                  "--out", str(tmp_path / "ref.npz"), "--device", "cpu"])
    assert not (tmp_path / "ref.npz").exists()
    (out / "fid_inception.sha256").unlink()  # no manifest: the workflow's stages refuse an unchecked file
    with pytest.raises(FileNotFoundError, match="fid_inception.sha256: missing; acquire the weights first"):
        load_fid_inception(path, require_manifest=True)

    ddpm_www = tmp_path / "ddpm_www"
    ddpm_www.mkdir()
    digests = _served_ddpm(ddpm_www, tmp_path, (SAFETENSORS,))
    ddpm = weights.acquire("ddpm_cifar10_pretrained", tmp_path / "ddpm", mirror=str(ddpm_www), digests=digests).parent
    (ddpm / "config.json").write_text((ddpm / "config.json").read_text().replace('"layers_per_block": 1', '"layers_per_block": 2'))
    with pytest.raises(io.ChecksumMismatch, match="config.json: sha256"):
        load_pretrained_unet(ddpm)


def test_full_size_generated_inception_loads_and_gives_finite_features(inception_www, tmp_path):
    """The generated stand-in has every key and shape of the real file: it loads strictly and runs."""
    from flowrepro.metrics.inception import inception_features, inception_weights_sha256

    root, url, sha256 = inception_www
    assert (root / FID_INCEPTION_FILE).stat().st_size > 90e6  # 24 M floats, as the published file
    out = weights.acquire("fid_inception", tmp_path / "fid_inception", mirror=url, digests={FID_INCEPTION_FILE: sha256})
    path = out.parent / FID_INCEPTION_FILE
    images = np.tanh(np.random.default_rng(0).standard_normal((2, 3, 32, 32))).astype(np.float32)
    features = inception_features(images, path, require_manifest=True)
    assert features.shape == (2, 2048) and np.isfinite(features).all() and features.std() > 0
    assert inception_weights_sha256(path, require_manifest=True) == sha256


def test_download_flags_come_from_the_scales_downloads_section():
    scale = {"downloads": {"mirror": "http://127.0.0.1:1/", "weights": ["fid_inception"],
                           "digests": {FID_INCEPTION_FILE: "a" * 64, "cifar-10-python.tar.gz": "b" * 32}}}
    assert weights.download_flags(scale, "fid_inception") == (f"--mirror 'http://127.0.0.1:1/' "
                                                              f"--digest {FID_INCEPTION_FILE}={'a' * 64}")
    assert weights.scale_weights(scale) == ["fid_inception"] and weights.scale_weights({}) == []
    assert weights.expected_sha256("fid_inception", FID_INCEPTION_FILE, weights.scale_digests(scale, "fid_inception")) == "a" * 64
    assert weights.download_flags({}, "fid_inception") == ""  # the public address and the pinned hash

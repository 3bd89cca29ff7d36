"""Files that cannot run code, inputs that are checked.

Models, training checkpoints and classifiers are safetensors + JSON: a pickle planted at their
path (as a model pulled from a shared DVC remote could be) is refused before anything in it runs,
and a flipped byte in their tensor data is caught by the sha256 in their header. Datasets are
checked against the ``.sha256`` that ``acquire`` wrote beside them. Every refusal names the file.
"""
import math
import pathlib
import pickle
import re
import struct

import numpy as np
import pytest
import torch

from flowrepro import io
from flowrepro.generative.paths import LinearPath
from flowrepro.generative.training import TrainConfig, train_flow
from flowrepro.models.mlp import build_mlp
from flowrepro.stages import acquire, train

from conftest import REPO

EXPERIMENT = REPO / "config/experiments/rectified_flow.yaml"


class Payload:
    """Unpickling this creates ``marker``: what a malicious pickle would do, harmlessly."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def plant(path: pathlib.Path, marker: pathlib.Path, how: str) -> None:
    """A pickle at ``path`` whose loading (torch.load(weights_only=False), pickle.load) touches ``marker``."""
    obj = {"seeds": {0: {"state_dict": {"w": torch.zeros(2)}}}, "payload": Payload(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))


def flip_byte(path: pathlib.Path, offset: int, bits: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= bits
    path.write_bytes(bytes(data))


def tensor_data_offset(path: pathlib.Path) -> int:
    """Where a safetensors file's tensor data starts: after the 8-byte header length and the header."""
    (header_length,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + header_length


@pytest.fixture
def moons(tmp_path):
    data = tmp_path / "data" / "moons.npz"
    acquire.run("moons", str(data), 2000, 500, 0, None, None)
    return data


@pytest.fixture
def trained_model(tmp_path, tiny_scale, moons):
    out = tmp_path / "results/models/moons/rf1.pt"
    train.run_from_experiment(str(EXPERIMENT), str(tiny_scale), "moons", "rf1", str(moons), str(out), progress=False)
    return out


# --- (a) a pickle payload at a model, checkpoint or classifier path is refused, and never runs ---

@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_the_payload_is_real(tmp_path, how):
    """The planted file does run code when unpickled: what the loaders below must never do."""
    marker = tmp_path / "MARKER"
    plant(tmp_path / "evil.pt", marker, how)
    if how == "torch.save":
        torch.load(tmp_path / "evil.pt", weights_only=False)
    else:
        pickle.loads((tmp_path / "evil.pt").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pickled_model_file_is_refused_naming_it(tmp_path, how):
    marker = tmp_path / "MARKER"
    model = tmp_path / "results/models/moons/0123456789ab.pt"
    plant(model, marker, how)
    with pytest.raises(io.UnsafeFileError, match=re.escape(f"{model}: not a safetensors file")) as error:
        train.load_models(str(model))
    assert "refusing to load it" in str(error.value)
    with pytest.raises(io.UnsafeFileError, match=re.escape(str(model))):  # per-seed files, and --init
        train.load_models([str(model)])
    with pytest.raises(io.UnsafeFileError, match=re.escape(str(model))):
        train._load_seeds([str(model)], "cpu")
    assert not marker.exists()


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pickled_checkpoint_is_refused_naming_it_and_training_does_not_start(tmp_path, how):
    marker = tmp_path / "MARKER"
    checkpoint = tmp_path / "results/models/moons/rf1.pt.seed0.ckpt"
    plant(checkpoint, marker, how)
    model = build_mlp(2, width=8, depth=1)
    before = [p.detach().clone() for p in model.parameters()]
    data = torch.randn(64, 2)
    from flowrepro.generative.couplings import independent

    with pytest.raises(io.UnsafeFileError, match=re.escape(f"{checkpoint}: not a safetensors file")):
        train_flow(model, lambda n, g: independent(data, n, g), LinearPath(), TrainConfig(steps=5, batch_size=8, lr=1e-3),
                   seed=0, run_name="evil", checkpoint=checkpoint, progress=False)
    assert not marker.exists()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pickled_classifier_is_refused_naming_it(tmp_path, how):
    from flowrepro.metrics.fid import fid_classifier, load_classifier_cached
    from flowrepro.models.classifier import load_classifier

    marker = tmp_path / "MARKER"
    classifier = tmp_path / "results/classifiers/digits.pt"
    plant(classifier, marker, how)
    for load in (load_classifier, load_classifier_cached):
        with pytest.raises(io.UnsafeFileError, match=re.escape(f"{classifier}: not a safetensors file")):
            load(classifier)
    stats = classifier.with_name("digits.stats.npz")
    io.save_npz(stats, mu=np.zeros(2), sigma=np.eye(2), n=np.int64(2))
    with pytest.raises(io.UnsafeFileError, match=re.escape(str(classifier))):
        fid_classifier(np.zeros((2, 1, 8, 8), np.float32), classifier, stats)
    assert not marker.exists()


def test_a_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.pt"
    save_file({"w": torch.zeros(3)}, path)  # safe, but not one of ours: no metadata, no checksum
    with pytest.raises(io.UnsafeFileError, match=re.escape(str(path))):
        train.load_models(str(path))


# --- (b) a flipped byte in a data file is refused through the stages, naming file and hashes ---

def test_flipped_byte_in_a_data_file_is_refused_by_train_naming_file_and_hashes(tmp_path, tiny_scale, moons):
    expected = io.sha256_file(moons)
    assert (moons.parent / "moons.npz.sha256").read_text() == f"{expected}  moons.npz\n"
    flip_byte(moons, moons.stat().st_size // 2)
    actual = io.sha256_file(moons)
    out = tmp_path / "rf1.pt"
    with pytest.raises(io.ChecksumMismatch) as error:
        train.run_from_experiment(str(EXPERIMENT), str(tiny_scale), "moons", "rf1", str(moons), str(out), progress=False)
    message = str(error.value)
    assert message.startswith(f"{moons}: ") and expected in message and actual in message, message
    assert not out.exists()


def test_flipped_byte_in_a_data_file_is_refused_by_evaluate_and_classifier(tmp_path, tiny_scale):
    from flowrepro.stages import classifier, evaluate

    digits = tmp_path / "data" / "digits.npz"
    acquire.run("digits", str(digits), 0, 0, 0, None, None)
    expected = io.sha256_file(digits)
    flip_byte(digits, digits.stat().st_size - 100)  # in the zip's central directory: np.load alone might not notice
    actual = io.sha256_file(digits)
    pattern = rf"{re.escape(str(digits))}: sha256 {actual} does not match {expected}"
    with pytest.raises(io.ChecksumMismatch, match=pattern):
        classifier.run(str(digits), str(tmp_path / "results/classifiers/digits.pt"), steps=1)
    with pytest.raises(io.ChecksumMismatch, match=pattern):
        evaluate.run(str(EXPERIMENT), str(tiny_scale), [str(digits)], [], str(tmp_path / "metrics.csv"))
    assert not (tmp_path / "results/classifiers/digits.pt").exists() and not (tmp_path / "metrics.csv").exists()


def test_a_data_file_without_its_checksum_is_refused_naming_the_sidecar(tmp_path, tiny_scale, moons):
    sidecar = moons.parent / "moons.npz.sha256"
    sidecar.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{sidecar}: missing; re-run `flowrepro acquire`")):
        train.run_from_experiment(str(EXPERIMENT), str(tiny_scale), "moons", "rf1", str(moons), str(tmp_path / "rf1.pt"), progress=False)
    sidecar.write_text("not a hash  moons.npz\n")
    with pytest.raises(io.ChecksumMismatch, match=re.escape(f"{sidecar}: not a sha256sum line")):
        io.load_data(moons)
    io.write_checksum(moons)
    assert io.load_data(moons)["train"].shape == (2000, 2)


# --- (c) a flipped byte in a model file's tensor data (or header) is refused, naming the file ---

def test_flipped_byte_in_model_tensor_data_is_refused_naming_file_and_hashes(trained_model):
    train.load_models(str(trained_model))  # intact: loads
    start = tensor_data_offset(trained_model)
    assert start < trained_model.stat().st_size
    flip_byte(trained_model, start + (trained_model.stat().st_size - start) // 2)
    with pytest.raises(io.ChecksumMismatch) as error:
        train.load_models(str(trained_model))
    message = str(error.value)
    assert message.startswith(f"{trained_model}: sha256 of its contents is ") and "corrupted" in message
    assert len(re.findall(r"\b[0-9a-f]{64}\b", message)) == 2, message


def test_flipped_byte_in_model_metadata_or_a_truncated_model_is_refused(trained_model, tmp_path):
    original = trained_model.read_bytes()
    position = original.index(b'rf1', 8)  # the model name, inside the JSON metadata
    flip_byte(trained_model, position, 0x01)  # "rf1" -> "sf1": still valid JSON, but not what was written
    with pytest.raises(io.ChecksumMismatch, match=re.escape(f"{trained_model}: sha256")):
        train.load_models(str(trained_model))
    for corrupt in (original[:len(original) - 7], original[:3], b""):  # truncated, and an empty file
        trained_model.write_bytes(corrupt)
        with pytest.raises(io.UnsafeFileError, match=re.escape(f"{trained_model}: not a safetensors file")):
            train.load_models(str(trained_model))
    header = bytearray(original)
    header[0] ^= 0x01  # a wrong header length
    trained_model.write_bytes(bytes(header))
    with pytest.raises(io.UnsafeFileError, match=re.escape(str(trained_model))):
        train.load_models(str(trained_model))


# --- (d) round trips: a model file and a checkpoint come back exactly ---

def _same(a, b) -> bool:
    """Equal values of equal types, all the way down (tensors bit for bit, dtype included)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def test_model_file_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    net = build_mlp(2, width=8, depth=1)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    result = {"experiment": "rectified_flow", "dataset": "moons", "model": "rf1", "shape": (2,),
              "spec": {"path": "linear", "coupling": "independent", "betas": [0.9, 0.99]},
              "settings": {"width": 8, "depth": 1, "lr": 1e-3, "bf16": True, "betas": None, "network": {"channels": 4}},
              "steps": 60, "data_var": 0.25, "seeds": {
                  0: {"state_dict": state, "ema_state_dict": {k: v + 1 for k, v in state.items()},
                      "losses": [1.0 / (k + 3) for k in range(100)] + [math.nan, math.inf], "wall_s": 1.25},
                  3: {"state_dict": {k: v.to(torch.bfloat16) for k, v in state.items()}, "losses": [0.5, 0.25],
                      "wall_s": 0.0}}}
    path = tmp_path / "model.pt"
    io.save_model_file(path, result)
    back = io.load_model_file(path)
    assert _same(result, back)
    assert isinstance(back["shape"], tuple) and list(back["seeds"]) == [0, 3]
    tensors, metadata = io.load_tensors(path)
    assert "seeds/0/state_dict/" + next(iter(state)) in tensors and metadata["kind"] == "model"
    assert path.read_bytes()[:2] != b"PK"  # not a torch.save zip


def test_trained_model_file_loads_to_the_trained_weights(trained_model):
    info, models = train.load_models(str(trained_model))
    assert info["shape"] == (2,) and info["model"] == "rf1" and list(models) == [0]
    entry = info["seeds"][0]
    assert isinstance(entry["losses"], list) and all(type(x) is float for x in entry["losses"])
    weights = entry.get("ema_state_dict", entry["state_dict"])
    assert all(torch.equal(weights[k], v) for k, v in models[0].network.state_dict().items())


def test_optimizer_state_round_trips_with_int_ids_and_param_groups(tmp_path):
    torch.manual_seed(0)
    net = build_mlp(2, width=8, depth=1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.8, 0.9))
    net(torch.randn(4, 2), torch.rand(4)).pow(2).mean().backward()
    optimizer.step()
    state = optimizer.state_dict()
    io.save_tree(tmp_path / "opt.ckpt", {"optimizer": state}, "checkpoint")
    back = io.load_tree(tmp_path / "opt.ckpt", "checkpoint")["optimizer"]
    assert _same(state, back)
    assert all(type(k) is int for k in back["state"]) and isinstance(back["param_groups"], list)
    assert back["param_groups"][0]["betas"] == (0.8, 0.9)
    with pytest.raises(ValueError, match="a checkpoint file, expected a model file"):
        io.load_model_file(tmp_path / "opt.ckpt")


def test_checkpoint_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    """Stop after the step-5 checkpoint, resume from the safetensors checkpoint: same losses and
    weights (model, EMA) as a run that never stopped."""
    from flowrepro.generative.couplings import independent

    data = torch.from_numpy(acquire.make_dataset("8gaussians", 500, 10)["train"])

    def run(steps: int, checkpoint):
        torch.manual_seed(0)
        model = build_mlp(2, width=16, depth=2)
        ema = build_mlp(2, width=16, depth=2).requires_grad_(False)
        ema.load_state_dict(model.state_dict())
        config = TrainConfig(steps=steps, batch_size=32, lr=3e-3, checkpoint_every=5, ema_decay=0.9, warmup=3)
        history = train_flow(model, lambda n, g: independent(data, n, g), LinearPath(), config, seed=0, run_name="rt",
                             checkpoint=checkpoint, progress=False, ema_model=ema)
        return history, model, ema

    full_history, full_model, full_ema = run(20, tmp_path / "full.ckpt")
    checkpoint = tmp_path / "stopped.ckpt"
    run(7, checkpoint)  # writes the step-5 checkpoint, then "stops"
    saved = io.load_tree(checkpoint, "checkpoint")
    assert saved["step"] == 5 and len(saved["history"]) == 5 and saved["generator"].dtype == torch.uint8
    assert all(type(k) is int for k in saved["optimizer"]["state"])
    history, model, ema = run(20, checkpoint)
    assert history == full_history
    for a, b in ((model, full_model), (ema, full_ema)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name


def test_a_header_length_that_starts_with_a_pickle_byte_still_loads(tmp_path):
    """The first byte of a safetensors file is its header length's lowest byte: 0x80 is not a pickle there."""
    import torch

    from flowrepro import io

    for width in range(1, 400):  # find a metadata size whose header length's low byte is 0x80
        path = tmp_path / "m.pt"
        io.save_tensors(path, {"w": torch.zeros(2)}, {"pad": "x" * width})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    tensors, metadata = io.load_tensors(path)
    assert metadata["pad"] == "x" * width and torch.equal(tensors["w"], torch.zeros(2))

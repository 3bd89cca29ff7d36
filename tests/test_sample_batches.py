"""Sampling in batches gives the samples and NFE of one batch; outputs stream to disk."""
import numpy as np
import pytest
import torch

from flowrepro import io
from flowrepro.models.mlp import build_mlp
from flowrepro.samplers import ode
from flowrepro.samplers.nfe import NFECounter
from flowrepro.stages.sample import batched


@pytest.mark.parametrize("batch", [7, 32, 1000])
def test_batched_fixed_step_sampling_equals_one_batch(batch):
    torch.manual_seed(0)
    model = build_mlp(2, width=16, depth=2).eval()
    x0 = torch.randn(100, 2)
    times = np.linspace(0, 1, 9)
    counter = NFECounter(lambda x, t: model(x, t))
    whole, nfe_whole, _ = batched(lambda x, _i: ode.integrate_fixed(counter, x, times, "heun"), x0, 1000, counter, "cpu")
    parts, nfe_parts, _ = batched(lambda x, _i: ode.integrate_fixed(counter, x, times, "heun"), x0, batch, counter, "cpu")
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)
    assert nfe_whole == nfe_parts == 16  # calls per sample, not summed over batches


def test_adaptive_nfe_is_the_mean_over_batches():
    calls = iter([10, 10, 13])
    counter = NFECounter(lambda x, t: x)

    def fake_solver(x, _index):
        for _ in range(next(calls)):
            counter(x, None)
        return x

    _, nfe, _ = batched(fake_solver, torch.zeros(30, 2), 10, counter, "cpu")
    assert nfe == pytest.approx(11.0)


def test_npz_writer_writes_one_array_at_a_time_and_only_on_success(tmp_path):
    path = tmp_path / "s.npz"
    with io.NpzWriter(path) as writer:
        writer.add("a/b/seed0", np.arange(6, dtype=np.float32).reshape(2, 3))
        writer.add("runs", np.array('{"x": 1}'))
    loaded = io.load_npz(path)
    assert loaded["a/b/seed0"].tolist() == [[0, 1, 2], [3, 4, 5]] and str(loaded["runs"]) == '{"x": 1}'
    with pytest.raises(RuntimeError):
        with io.NpzWriter(tmp_path / "broken.npz") as writer:
            writer.add("a", np.zeros(3))
            raise RuntimeError("killed mid-way")
    assert not (tmp_path / "broken.npz").exists() and list(tmp_path.iterdir()) == [path]
    with pytest.raises(KeyError, match="written twice"), io.NpzWriter(tmp_path / "twice.npz") as writer:
        writer.add("a", np.zeros(1))
        writer.add("a", np.zeros(1))

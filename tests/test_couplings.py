"""minibatch_sinkhorn: an entropic OT coupling between independent (reg -> inf) and exact OT (reg -> 0)."""
from __future__ import annotations

import pytest
import torch

from flowrepro.config import model_key, validate
from flowrepro.generative import couplings
from flowrepro.registry import COUPLINGS

from conftest import REPO


def blobs(seed: int, n: int = 4000) -> torch.Tensor:
    """Two Gaussian blobs at (+-3, 0), sd 0.5: far from x0 ~ N(0, I), so couplings differ a lot."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])
    return centres[torch.randint(0, 2, (n,), generator=g)] + 0.5 * torch.randn(n, 2, generator=g)


def cost(x0: torch.Tensor, x1: torch.Tensor) -> float:
    """Mean squared transport cost E |x0 - x1|^2 of the pairs."""
    return ((x0 - x1) ** 2).flatten(1).sum(1).mean().item()


def draw(name: str, data: torch.Tensor, seed: int, **options) -> tuple[torch.Tensor, torch.Tensor]:
    return COUPLINGS.get(name)(data, 256, torch.Generator().manual_seed(seed), **options)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sinkhorn_cost_lies_between_ot_and_independent(seed):
    # Verified over seeds 0-19: default/independent <= 0.59, 0.01/ot <= 1.042, 10/all-pairs in [0.92, 1.05].
    data = blobs(seed)
    x0, x1 = draw("independent", data, seed)
    all_pairs = torch.cdist(x0, x1).pow(2).mean().item()  # the expected cost of independent pairing of this batch
    exact = cost(*draw("minibatch_ot", data, seed))
    assert cost(*draw("minibatch_sinkhorn", data, seed)) < 0.7 * cost(x0, x1)  # default reg 0.05
    assert cost(*draw("minibatch_sinkhorn", data, seed, reg=0.01)) < 1.1 * exact
    assert cost(*draw("minibatch_sinkhorn", data, seed, reg=10.0)) == pytest.approx(all_pairs, rel=0.15)
    assert exact < 0.6 * all_pairs  # the two ends are far apart, so the checks above separate them


def test_sinkhorn_keeps_shapes_dtypes_and_the_draws_for_images():
    data = torch.randn(500, 1, 8, 8)
    x0_ind, x1_ind = draw("independent", data, 3)
    x0, x1 = draw("minibatch_sinkhorn", data, 3)
    assert (x0.shape, x0.dtype, x1.shape, x1.dtype) == (x0_ind.shape, x0_ind.dtype, x1_ind.shape, x1_ind.dtype)
    torch.testing.assert_close(x1, x1_ind)  # the same data draws ...
    same = (x0.flatten(1)[:, None] == x0_ind.flatten(1)[None]).all(-1)
    assert same.any(1).all()  # ... and every x0 is one of the noise draws (with replacement)


def test_sinkhorn_is_deterministic_given_the_generator():
    data = blobs(0)
    first, again, other = draw("minibatch_sinkhorn", data, 5), draw("minibatch_sinkhorn", data, 5), draw("minibatch_sinkhorn", data, 6)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first[0], other[0])


@pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")  # 1000 log-domain iterations at reg 1e-3: close enough here
def test_small_reg_falls_back_to_the_log_domain(monkeypatch):
    import ot

    calls = []
    log_domain = ot.bregman.sinkhorn_log
    monkeypatch.setattr(ot.bregman, "sinkhorn_log", lambda *a, **k: calls.append(a[3]) or log_domain(*a, **k))
    g = torch.Generator().manual_seed(0)
    c = torch.cdist(torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g) + 3).pow(2).double()
    c = c / c.mean()
    plan = couplings._entropic_plan(c, 0.05)  # exp(-C / reg) fine: the scaling form is kept
    assert calls == []
    plan = couplings._entropic_plan(c, 1e-3)  # exp(-C / reg) underflows to 0 for most pairs
    assert calls == [1e-3] and torch.isfinite(plan).all()
    torch.testing.assert_close(plan.sum(1), torch.full((64,), 1 / 64, dtype=torch.float64))
    torch.testing.assert_close(plan.sum(0), torch.full((64,), 1 / 64, dtype=torch.float64), rtol=1e-2, atol=0)


def test_coupling_reg_is_in_the_schema_and_the_model_key():
    def experiment(**spec):
        return {"id": "x", "title": "t", "source": "s", "kind": "flow", "datasets": ["moons"], "claims": [],
                "models": {"m": {"coupling": "minibatch_sinkhorn", **spec}}, "sampling": {"euler": {"nfe": [1]}}}

    assert validate(experiment(coupling_reg=0.1), "experiment", "test")
    with pytest.raises(Exception, match="coupling_reg"):
        validate(experiment(coupling_reg=0), "experiment", "test")
    keys = {model_key(experiment(**spec), "m", "moons") for spec in ({}, {"coupling_reg": 0.01}, {"coupling_reg": 0.1})}
    assert len(keys) == 3


def test_coupling_reg_on_a_coupling_without_reg_is_a_config_error(tmp_path):
    import yaml

    from flowrepro.config import ConfigError, load_experiment

    spec = yaml.safe_load((REPO / "config/experiments/multisample_fm.yaml").read_text())
    spec["models"]["fm_minibatch_ot"]["coupling_reg"] = 0.1
    path = tmp_path / "multisample_fm.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="coupling_reg.*takes no reg"):
        load_experiment(path)

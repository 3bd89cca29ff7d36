"""Our own eps-model samplers (HB, GHVB, PLMS, BDIA) on trained networks through EpsilonAtLevel: the
sample stage runs exactly the sampler on the network (same samples, same counted calls), options are
checked at config load, BDIA's round trip through the network is exact in float64 and DDIM's is not,
and on a pretrained DDPM the UNet is called at DDIM's trailing integer training steps."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _experiment(tmp_path, sampling: dict):
    spec = yaml.safe_load((REPO / "config/experiments/momentum_samplers_trained.yaml").read_text())
    spec.update(datasets=["8gaussians"], sampling=sampling, claims=[])
    path = tmp_path / "momentum_samplers_trained.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sample_stage_runs_hb_and_bdia_on_the_network_as_direct_calls(tmp_path, tiny_scale):
    """HB through the sample stage = momentum.heavy_ball on EpsilonAtLevel(model) from the stage's noise (bit
    for bit, 10 counted calls); BDIA's stored round trip (gamma = 1, float64 network) returns its samples to
    1e-5 while DDIM's misses by far more; the round trip's calls are not in the run's NFE."""
    from flowrepro.samplers import momentum, trained_diffusion
    from flowrepro.samplers.nfe import NFECounter
    from flowrepro.stages import acquire, evaluate, sample, train

    data = tmp_path / "8gaussians.npz"
    acquire.run("8gaussians", str(data), n_train=2000, n_test=500, seed=0, download_dir=None, mirror=None)
    model_file = tmp_path / "vp_eps.pt"
    train.run_from_experiment(str(REPO / "config/experiments/time_shift_trained.yaml"), str(tiny_scale), "8gaussians", "vp_eps",
                              str(data), str(model_file), progress=False)
    experiment = _experiment(tmp_path, {"hb_3.8": {"sampler": {"name": "hb", "order": 3.8}, "nfe": [10]},
                                        "bdia_g1": {"sampler": {"name": "bdia", "gamma": 1.0}, "nfe": [10]},
                                        "ddim": {"nfe": [10]}, "ddim_no_trip": {"sampler": "ddim", "round_trip": False, "nfe": [10]}})
    out = tmp_path / "samples.npz"
    sample.run(str(experiment), str(tiny_scale), str(model_file), str(out), method="vp_eps")
    stored = np.load(out)
    runs = {r["sampler"]: r for r in json.loads(str(stored["runs"]))["runs"]}
    assert all(r["nfe"] == 10 for r in runs.values())  # the round trips' calls are apart

    info, models = train.load_models(str(model_file))
    x0 = sample._noise(len(stored[runs["hb_3.8"]["key"]]), tuple(info["shape"]), 0, "cpu")
    counter = NFECounter(models[0])
    direct, _ = momentum.heavy_ball(trained_diffusion.EpsilonAtLevel(counter), x0, 10, order=3.8)
    np.testing.assert_array_equal(stored[runs["hb_3.8"]["key"]], direct.numpy())
    assert counter.calls == 10 and "roundtrip_key" not in runs["hb_3.8"]
    assert "roundtrip_key" not in runs["ddim_no_trip"]  # round_trip: false turns DDIM's automatic round trip off
    np.testing.assert_array_equal(stored[runs["ddim_no_trip"]["key"]], stored[runs["ddim"]["key"]])

    errors = {name: evaluate.inversion_error(stored[runs[name]["key"]][:sample.ROUND_TRIP_POINTS], stored[runs[name]["roundtrip_key"]])
              for name in ("bdia_g1", "ddim")}
    assert errors["bdia_g1"] < 1e-5, errors
    assert errors["ddim"] > 1e3 * errors["bdia_g1"] and errors["ddim"] > 1e-3, errors


def test_an_unknown_option_of_an_eps_sampler_is_refused_at_config_load_naming_it(tmp_path):
    from flowrepro.config import ConfigError, load_experiment

    load_experiment(str(_experiment(tmp_path, {"ghvb": {"sampler": {"name": "ghvb", "order": 2.5}, "nfe": [6]},
                                               "plms4": {"sampler": {"name": "plms_ab", "order": 4}, "nfe": [6]}})))
    with pytest.raises(ConfigError, match=r"sampling/hb_3.8/sampler.*'hb' has no option\(s\) \['ordr'\]"):
        load_experiment(str(_experiment(tmp_path, {"hb_3.8": {"sampler": {"name": "hb", "ordr": 3.8}, "nfe": [10]}})))


def test_eps_samplers_are_the_marked_ones_and_budgets_divide_by_calls_per_step():
    from flowrepro.samplers import trained_diffusion
    from flowrepro.stages.sample import sampler_runs

    assert all(trained_diffusion.is_eps_sampler(name) for name in ("plms_ab", "hb", "ghvb", "bdia", "dpm_solver_v3"))
    assert not any(trained_diffusion.is_eps_sampler(name) for name in ("euler", "ddim", "dopri5"))
    name, settings = sampler_runs("g", {"sampler": {"name": "ghvb", "order": 2.5}, "nfe": [6, 11]})
    assert name == "ghvb" and [k for _, k in settings] == [{"steps": 6, "schedule": "uniform", "order": 2.5},
                                                           {"steps": 11, "schedule": "uniform", "order": 2.5}]


def test_hb_on_a_pretrained_ddpm_calls_the_unet_at_ddims_integer_steps(tmp_path):
    """On the discrete DDPM path EpsilonAtLevel inverts each level exactly: the UNet sees the trailing
    training steps round(arange(1000, 0, -1000 / K)) - 1, once a step."""
    from test_pretrained_model import _acquired_ddpm, _data

    from flowrepro.models.pretrained import load_pretrained_models
    from flowrepro.registry import SAMPLERS
    from flowrepro.samplers import trained_diffusion
    from flowrepro.samplers.nfe import NFECounter

    directory = _acquired_ddpm(tmp_path / "ddpm_cifar10_pretrained")
    _, models = load_pretrained_models(directory, "ddpm_cifar10", str(_data(tmp_path / "cifar10.npz")), [0])
    unet = models[0].network.unet
    seen, original = [], unet.forward
    unet.forward = lambda x, t, **kw: (seen.append(t.double().reshape(-1)[0].item()), original(x, t, **kw))[1]
    counter = NFECounter(models[0])
    x = trained_diffusion.sample_eps(SAMPLERS.get("hb"), counter, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), 5)
    unet.forward = original
    expected = np.round(np.arange(1000, 0, -1000 / 5)).astype(np.int64) - 1
    assert counter.calls == 5 and seen == pytest.approx([float(t) for t in expected], abs=1e-6)
    assert torch.isfinite(x).all()


def test_sample_stage_runs_hb_and_bdia_with_round_trip_on_a_pretrained_ddpm(tmp_path, tiny_scale):
    """momentum_samplers_trained's pretrained entry: the sample stage runs HB and BDIA (with its float64 round
    trip through a copy of the UNet) on the acquired diffusers DDPM, NFE counted, samples finite."""
    from test_pretrained_model import _acquired_ddpm, _data

    from flowrepro.stages import sample

    directory = _acquired_ddpm(tmp_path / "ddpm_cifar10_pretrained")
    data = _data(tmp_path / "cifar10.npz")
    experiment = _experiment(tmp_path, {"hb_3.8": {"sampler": {"name": "hb", "order": 3.8}, "nfe": [4]},
                                        "bdia_g1": {"sampler": {"name": "bdia", "gamma": 1.0}, "nfe": [4]}})
    out = tmp_path / "ddpm.npz"
    sample.run(str(experiment), str(tiny_scale), None, str(out), method="ddpm_cifar10", pretrained=str(directory),
               data_file=str(data))
    stored = np.load(out)
    runs = {r["sampler"]: r for r in json.loads(str(stored["runs"]))["runs"]}
    assert {runs["hb_3.8"]["nfe"], runs["bdia_g1"]["nfe"]} == {4}
    assert np.isfinite(stored[runs["hb_3.8"]["key"]]).all()
    back = stored[runs["bdia_g1"]["roundtrip_key"]]
    assert np.abs(back - stored[runs["bdia_g1"]["key"]][: len(back)]).max() < 1e-3  # float64 round trip, float32 samples

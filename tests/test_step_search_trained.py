"""Schedule search on a trained model (a sampling entry's ``search:``): the search sees only its calibration
draws, never the evaluation noise; the stored samples are the recorded schedule run from the evaluation
noise; its recorded fitness is reproduced on the calibration draws; its calls are reported apart from NFE."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_sample_stage_searches_on_calibration_draws_and_samples_the_found_schedule(tmp_path, tiny_scale):
    from flowrepro.samplers import step_search, trained_diffusion
    from flowrepro.samplers.nfe import NFECounter
    from flowrepro.stages import acquire, sample, train

    data = tmp_path / "8gaussians.npz"
    acquire.run("8gaussians", str(data), n_train=2000, n_test=500, seed=0, download_dir=None, mirror=None)
    spec = yaml.safe_load((REPO / "config/experiments/step_search_trained.yaml").read_text())
    spec.pop("recipes_from")
    small = {"population": 4, "generations": 2, "parents": 2, "n_calibration": 16}
    spec.update(datasets=["8gaussians"], claims=[], sampling={
        "s3": {"search": {"variant": "s3", **small}, "nfe": [4]},
        "autodiffusion": {"sampler": "euler_discrete", "search": {"variant": "autodiffusion", **small}, "nfe": [3]}})
    experiment = tmp_path / "step_search_trained.yaml"
    experiment.write_text(yaml.safe_dump(spec))
    model_file = tmp_path / "fm_ot.pt"
    train.run_from_experiment(str(experiment), str(tiny_scale), "8gaussians", "fm_ot", str(data), str(model_file), progress=False)
    out = tmp_path / "samples.npz"
    sample.run(str(experiment), str(tiny_scale), str(model_file), str(out), method="fm_ot")
    stored = np.load(out)
    runs = {r["sampler"]: r for r in json.loads(str(stored["runs"]))["runs"]}
    info, models = train.load_models(str(model_file))
    x0 = sample._noise(len(stored[runs["s3"]["key"]]), tuple(info["shape"]), 0, "cpu")
    calibration = step_search.calibration_noise(tuple(info["shape"]), 0, 16)
    assert not torch.isclose(calibration[:, None], x0[None]).all(-1).any()  # no calibration draw is an evaluation noise

    for label, budget in (("s3", 4), ("autodiffusion", 3)):
        run = runs[label]
        assert run["nfe"] == budget and run["schedule"] == "searched" and run["calibration_nfe"] > budget
        found = run["searched"]
        entry = {k: found[k] for k in ("variant", "timesteps", "orders", "afs") if k in found}
        if label == "autodiffusion":
            entry["sampler"] = "euler_discrete"
        fit = step_search.network_fitness(trained_diffusion.EpsilonAtLevel(models[0]), tuple(info["shape"]), 0, 16)
        assert fit(entry) == pytest.approx(found["fitness"], rel=1e-6)  # the fitness is on the calibration draws
        assert found["fitness"] == min(found["fitness_history"]) <= found["fitness_history"][0]
        counter = NFECounter(models[0])
        direct, _ = step_search.run_entry(trained_diffusion.EpsilonAtLevel(counter), x0, entry, fit.mean)
        np.testing.assert_allclose(stored[run["key"]], direct.numpy(), rtol=1e-5, atol=1e-5)
        assert counter.calls == budget


def test_autodiffusion_needs_a_diffusers_scheduler_and_s3_needs_no_registered_sampler(tmp_path):
    from flowrepro.config import ConfigError, load_experiment

    spec = yaml.safe_load((REPO / "config/experiments/step_search_trained.yaml").read_text())
    spec.pop("recipes_from")
    spec["sampling"]["autodiffusion"]["sampler"] = "euler"
    path = tmp_path / "step_search_trained.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"sampling/autodiffusion/search: autodiffusion searches the timesteps of a diffusers scheduler"):
        load_experiment(path)
    spec["sampling"]["autodiffusion"]["sampler"] = "euler_discrete"
    path.write_text(yaml.safe_dump(spec))
    assert load_experiment(path)["sampling"]["s3"]["search"]["variant"] == "s3"

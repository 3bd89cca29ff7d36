"""Sampler features on trained models through the stages: BOSS grids, time shift, solver error, distillation."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from flowrepro.stages import acquire, evaluate, sample, train

from conftest import REPO


@pytest.fixture
def trained(tmp_path, tiny_scale):
    """fm_ot (linear path) and vp_eps trained briefly on 8gaussians, with the test's scale and data."""
    data = tmp_path / "8gaussians.npz"
    acquire.run("8gaussians", str(data), n_train=2000, n_test=500, seed=0, download_dir=None, mirror=None)
    models = {}
    for experiment, model in (("boss_trained", "fm_ot"), ("time_shift_trained", "vp_eps")):
        out = tmp_path / f"{model}.pt"
        train.run_from_experiment(str(REPO / f"config/experiments/{experiment}.yaml"), str(tiny_scale), "8gaussians", model, str(data),
                  str(out), progress=False)
        models[model] = out
    return tmp_path, tiny_scale, data, models


def _experiment(tmp_path, name: str, **changes):
    spec = yaml.safe_load((REPO / f"config/experiments/{name}.yaml").read_text())
    spec.update(datasets=["8gaussians"], **changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _runs(samples_file):
    return json.loads(str(np.load(samples_file)["runs"]))["runs"]


def test_boss_and_time_shift_run_on_trained_models_with_counted_nfe(trained):
    tmp_path, scale, data, models = trained
    sampling = {"euler": {"nfe": [4]},
                "euler_boss": {"sampler": "euler", "schedule": "boss", "nfe": [3, 4], "n_fine": 40, "substeps": 1,
                               "n_calibration": 32},
                "dpm_boss": {"sampler": "dpmsolver2m", "schedule": "boss", "nfe": [4], "n_fine": 40, "substeps": 1,
                             "n_calibration": 32}}
    experiment = _experiment(tmp_path, "boss_trained", sampling=sampling)
    sample.run(str(experiment), str(scale), str(models["fm_ot"]), str(tmp_path / "boss.npz"))
    runs = {(r["sampler"], r["nfe"]): r for r in _runs(tmp_path / "boss.npz")}
    assert set(runs) == {("euler", 4), ("euler_boss", 3), ("euler_boss", 4), ("dpm_boss", 4)}
    # the calibration cost is recorded apart from the per-sample NFE: the 40-step Euler reference, whose
    # velocities also give every jump's cost (the official BOSS)
    assert runs[("euler_boss", 4)]["calibration_nfe"] == 40 and runs[("euler", 4)]["calibration_nfe"] == 0
    arrays = np.load(tmp_path / "boss.npz")
    assert not np.allclose(arrays[runs[("euler_boss", 4)]["key"]], arrays[runs[("euler", 4)]["key"]])

    shifted = _experiment(tmp_path, "time_shift_trained", sampling={"ddim": {"nfe": [5]}, "ddim_ts": {"nfe": [5], "window": 20}})
    sample.run(str(shifted), str(scale), str(models["vp_eps"]), str(tmp_path / "ts.npz"))
    assert {(r["sampler"], r["nfe"]) for r in _runs(tmp_path / "ts.npz")} == {("ddim", 5), ("ddim_ts", 5)}


def test_reference_solve_gives_solver_error_rows_that_fall_with_nfe(trained):
    tmp_path, scale, data, models = trained
    experiment = _experiment(tmp_path, "flow_solvers_trained", sampling={"euler": {"nfe": [2, 8, 32]}})
    sample.run(str(experiment), str(scale), str(models["fm_ot"]), str(tmp_path / "s.npz"))
    evaluate.run(str(experiment), str(scale), [str(data)], [str(tmp_path / "s.npz")], str(tmp_path / "m.csv"))
    frame = pd.read_csv(tmp_path / "m.csv")
    errors = frame[frame.metric == "solver_error"].set_index("nfe")["value"]
    assert list(errors.index) == [2, 8, 32]
    assert errors[32] < errors[8] < errors[2]  # Euler converges to the fine solve of the same ODE
    assert {"sliced_w2", "mmd", "w2"} <= set(frame.metric)


def test_time_shift_on_a_model_without_data_var_names_the_file(trained, tmp_path):
    from flowrepro import io

    _, scale, _, models = trained
    info = io.load_model_file(models["vp_eps"])
    del info["data_var"]
    old = tmp_path / "old.pt"
    io.save_model_file(old, info)
    shifted = _experiment(tmp_path, "time_shift_trained", sampling={"ddim_ts": {"nfe": [5]}})
    with pytest.raises(KeyError, match="old.pt: no data_var"):
        sample.run(str(shifted), str(scale), str(old), str(tmp_path / "ts.npz"))


def test_a_sampling_entry_runs_only_for_the_models_it_names(trained):
    tmp_path, scale, data, models = trained
    sampling = {"euler": {"nfe": [2]}, "euler_perturbed": {"sampler": "euler", "nfe": [2], "velocity_error": 0.5,
                                                           "models": ["fm_vp"]}}
    experiment = _experiment(tmp_path, "boss_trained", sampling=sampling)
    sample.run(str(experiment), str(scale), str(models["fm_ot"]), str(tmp_path / "ot.npz"), method="fm_ot")
    sample.run(str(experiment), str(scale), str(models["fm_ot"]), str(tmp_path / "vp.npz"), method="fm_vp")
    assert {r["sampler"] for r in _runs(tmp_path / "ot.npz")} == {"euler"}
    assert {r["sampler"] for r in _runs(tmp_path / "vp.npz")} == {"euler", "euler_perturbed"}

    from flowrepro.config import ConfigError, load_experiment

    typo = _experiment(tmp_path, "boss_trained", sampling={"euler": {"nfe": [2], "models": ["fm_oot"]}})
    with pytest.raises(ConfigError, match="sampling/euler/models.*fm_oot"):
        load_experiment(typo)

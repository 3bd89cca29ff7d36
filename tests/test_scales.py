"""Scales that mean the papers: dataset roles, the papers' networks and recipes, per-seed jobs, sizes checked."""
import re
import subprocess

import pytest
import yaml

from conftest import REPO
from flowrepro.config import (ConfigError, bind_roles, check_dataset_sizes, load_experiment, load_scale, model_key,
                              training_settings)

TRAIN_JOB = re.compile(r"rule (train|train_seed):\n(?:    .*\n)*?    wildcards: dataset=(\w+), key=([0-9a-f]{12})(?:, seed=(\d+))?")
FLOW_EXPERIMENTS = [p.stem for p in sorted((REPO / "config/experiments").glob("*.yaml"))
                    if yaml.safe_load(p.read_text())["kind"] == "flow"]
TWO_D = {"moons", "8gaussians", "checkerboard", "spirals", "gmm2d", "gmm16d"}


def planned_trainings(scale: str) -> list[tuple[str, str, str, str | None]]:
    """(rule, dataset, key, seed) of every training job `snakemake -n` plans at ``scale``."""
    run = subprocess.run(["snakemake", "-n", "--cores", "1", "--configfile", f"config/scales/{scale}.yaml"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return TRAIN_JOB.findall(run.stdout)


def image_models(scale_name: str) -> set[tuple[str, str]]:
    """(dataset, key) of every image model of every flow experiment, computed from the configs."""
    scale = load_scale(REPO / f"config/scales/{scale_name}.yaml")
    models = set()
    for name in FLOW_EXPERIMENTS:
        experiment = bind_roles(load_experiment(REPO / f"config/experiments/{name}.yaml"), scale)
        for dataset in set(experiment["datasets"]) - TWO_D:
            models |= {(dataset, model_key(experiment, m, dataset, scale)) for m in experiment["models"]}
    return models


@pytest.mark.parametrize("scale,images,seeds", [("paper", "cifar10", 5), ("small", "mnist", 3)])
def test_every_flow_model_trains_on_the_scales_images_one_job_per_seed(scale, images, seeds):
    jobs = planned_trainings(scale)
    datasets = {dataset for _, dataset, _, _ in jobs}
    assert datasets - TWO_D == {images}, datasets  # no digits at small or paper
    assert {rule for rule, *_ in jobs} == {"train_seed"}
    expected = image_models(scale)
    assert expected and {d for d, _ in expected} == {images}
    planned = {(dataset, key, seed) for _, dataset, key, seed in jobs if dataset == images}
    assert planned == {(d, k, str(s)) for d, k in expected for s in range(seeds)}


def test_tiny_plans_the_same_trainings_as_before():
    jobs = planned_trainings("tiny")
    # one job trains all seeds; guided_flows' vp_cond runs at small and paper only, pfgmpp on digits only, and
    # rectified_diffusion's 2-D half (moons) shares rectified_flow's 1-RF and 2-RF
    assert len(jobs) == 37 and {rule for rule, *_ in jobs} == {"train"}
    assert {dataset for _, dataset, _, _ in jobs} - TWO_D == {"digits"}
    # model keys are unchanged by roles and recipes at tiny: rectified flow's 1-RF, 2-RF and distilled 2-RF on
    # digits, keys computed before either existed (cached tiny results stay valid)
    assert {("train", "digits", key, "") for key in ("6ae9bb792ed7", "6e19d523583a", "d4e81fa46f42")} <= set(jobs)


def test_ddpm_cifar10_network_has_the_papers_parameter_count():
    from flowrepro.models.unet import NETWORKS, build_unet, parameter_count

    count = parameter_count(build_unet((3, 32, 32), "ddpm_cifar10"))
    print(f"ddpm_cifar10: {count / 1e6:.3f} M parameters (paper: {NETWORKS['ddpm_cifar10'].parameters_m} M)")
    assert count == pytest.approx(35.75e6, rel=0.01)
    blocks = build_unet((3, 32, 32), "ddpm_cifar10").unet.down_blocks
    assert [type(b).__name__ for b in blocks] == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]  # attention at 16x16
    assert build_unet((3, 32, 32), {"preset": "ddpm_cifar10", "dropout": 0.15}).unet.down_blocks[0].resnets[0].dropout.p == 0.15


def test_network_errors_name_the_option():
    from flowrepro.models.unet import build_unet

    with pytest.raises(KeyError, match="unknown network preset 'ddpm_cifar100'"):
        build_unet((3, 32, 32), "ddpm_cifar100")
    with pytest.raises(KeyError, match="chanels"):
        build_unet((3, 32, 32), {"chanels": [8]})
    with pytest.raises(ValueError, match=r"attention at \[16\]"):
        build_unet((1, 8, 8), {"channels": [8, 16], "attention_resolutions": [16]})


def test_recipes_come_from_the_scale_then_the_experiment_then_the_scales_overrides():
    rf = load_experiment(REPO / "config/experiments/rectified_flow.yaml")
    paper, smoke, tiny = (load_scale(REPO / f"config/scales/{s}.yaml") for s in ("paper", "smoke", "tiny"))
    settings = training_settings(paper, rf, "cifar10")
    assert settings["ema_decay"] == 0.999999 and settings["steps"] == 1300000 and settings["hflip"] is True
    assert settings["network"] == {"preset": "ddpm_cifar10", "dropout": 0.15}
    assert all(key in rf["recipes"]["paper"]["sources"] for key in rf["recipes"]["paper"] if key not in ("sources", "deviation"))
    smoke_settings = training_settings(smoke, rf, "cifar10")  # the paper recipe, two steps
    assert smoke_settings["steps"] == 2 and smoke_settings["ema_decay"] == 0.999999 and smoke_settings["batch_size"] == 4
    assert training_settings(tiny, rf, "digits") == tiny["flow_images"]  # no tiny recipe: the scale's own
    assert training_settings(paper, rf, "moons") == paper["flow2d"]      # recipes size image models only
    # experiments that train the same spec with different recipes get different models; recipes_from shares them
    score, shift = (load_experiment(REPO / f"config/experiments/{n}.yaml") for n in ("score_sde", "time_shift_trained"))
    assert model_key(score, "vp_eps", "cifar10", paper) == model_key(shift, "vp_eps", "cifar10", paper)
    improved = load_experiment(REPO / "config/experiments/improved_rf.yaml")
    assert model_key(improved, "rf1", "cifar10", paper) != model_key(rf, "rf1", "cifar10", paper)
    assert model_key(improved, "rf1", "digits", tiny) == model_key(rf, "rf1", "digits", tiny)


def test_roles_bind_datasets_and_claims_select_by_role():
    import pandas as pd

    from flowrepro.claims import check_claim

    rf = load_experiment(REPO / "config/experiments/rectified_flow.yaml")
    assert rf["datasets"] == ["moons", "images"]
    assert bind_roles(rf, load_scale(REPO / "config/scales/paper.yaml"))["datasets"] == ["moons", "cifar10"]
    with pytest.raises(ConfigError, match="role.*images.*no dataset"):
        bind_roles(rf, {"scale": "custom", "roles": {}})
    table = pd.DataFrame([{"dataset": "cifar10", "method": m, "metric": "fid_classifier", "value": v, "seed": 0,
                           "sampler": "euler", "nfe": 1, "experiment": "x", "optimizer": "", "schedule": "", "scale": "paper"}
                          for m, v in (("a", 1.0), ("b", 2.0))])
    result = check_claim("fid_classifier[method=a, dataset=images] < fid_classifier[method=b, dataset=images]", table,
                         {"images": "cifar10"})
    assert result["status"] == "pass"


def test_sizes_the_data_cannot_supply_fail_when_the_config_is_loaded(tmp_path):
    paper = load_scale(REPO / "config/scales/paper.yaml")
    paper["flow_images"]["n_eval"] = 60000
    with pytest.raises(ConfigError, match=r"flow_images/n_eval = 60000 exceeds the 50000 training images of cifar10"):
        check_dataset_sizes(paper, ["cifar10", "moons"], "paper.yaml")
    tiny = load_scale(REPO / "config/scales/tiny.yaml")
    tiny["flow_images"]["n_eval"] = 500  # more than digits' 359 test images
    with pytest.raises(ConfigError, match=r"w2_points .* exceeds the 359 test images of digits"):
        check_dataset_sizes(tiny, ["digits"], "tiny.yaml")
    bad = yaml.safe_load((REPO / "config/scales/small.yaml").read_text())
    bad["flow2d"]["n_eval"] = 200000
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"flow2d/n_eval = 200000 exceeds flow2d/n_train"):
        load_scale(path)


def test_the_workflow_refuses_an_n_eval_above_the_dataset_before_any_job(workflow_copy):
    scale = workflow_copy / "config/scales/paper.yaml"
    data = yaml.safe_load(scale.read_text())
    data["flow_images"]["n_eval"] = 60000
    scale.write_text(yaml.safe_dump(data))
    run = subprocess.run(["snakemake", "-n", "--cores", "1", "--configfile", "config/scales/paper.yaml"], cwd=workflow_copy,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "flow_images/n_eval = 60000" in run.stdout + run.stderr
    assert "Job stats" not in run.stdout + run.stderr

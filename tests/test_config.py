"""Bad config fails before any job runs, with a message naming the file and the key."""
import subprocess

import pytest
import yaml

from conftest import REPO
from flowrepro.config import ConfigError, load_experiment, load_scale


def snakemake_dry_run(directory, *args):
    return subprocess.run(["snakemake", "-n", "--cores", "1", *args], cwd=directory, capture_output=True, text=True, timeout=120)


def edit_yaml(path, change):
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_default_config_builds_the_dag(workflow_copy):
    result = snakemake_dry_run(workflow_copy)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "report" in result.stdout


def test_paper_scale_dag_builds(workflow_copy):
    result = snakemake_dry_run(workflow_copy, "--configfile", "config/scales/paper.yaml")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("file,change,named", [
    ("config/config.yaml", lambda d: d.update(experimentz=d.pop("experiments")), "experimentz"),
    ("config/config.yaml", lambda d: d.update(scale="huge"), "huge"),
    ("config/config.yaml", lambda d: d.update(flow2d={"stepz": 100}), "stepz"),  # an override the scale lacks
    ("config/config.yaml", lambda d: d.update(scale="my/trial.yaml"), "my/trial.yaml"),
    ("config/scales/tiny.yaml", lambda d: d["flow2d"].update(steps="many"), "flow2d/steps"),
    ("config/scales/tiny.yaml", lambda d: d["flow2d"].update(stepz=d["flow2d"].pop("steps")), "stepz"),
    ("config/experiments/rectified_flow.yaml", lambda d: d["models"]["rf1"].update(coupling="indepndent"), "models/rf1/coupling"),
    ("config/experiments/rectified_flow.yaml", lambda d: d["sampling"].update(eulr={"nfe": [1]}), "eulr"),
    ("config/experiments/rectified_flow.yaml", lambda d: d["models"]["rf2"].update(pairs_from="rf9"), "rf9"),
])
def test_bad_config_fails_before_any_job_naming_the_key(workflow_copy, file, change, named):
    edit_yaml(workflow_copy / file, change)
    result = snakemake_dry_run(workflow_copy)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert named in output
    assert "Job stats" not in output  # the DAG was never built
    assert not (workflow_copy / "results").exists()


def test_loaders_name_the_file(tmp_path):
    bad = tmp_path / "rectified_flow.yaml"
    bad.write_text("id: rectified_flow\nkind: flow\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_experiment(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_scale(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("scale: [tiny\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_scale(broken)


def test_an_ema_decay_the_scale_gives_anyway_shares_the_model():
    from flowrepro.config import model_key, shared_models

    def experiment(**spec):
        return {"kind": "flow", "datasets": ["moons", "digits"], "models": {"m": {"path": "linear", **spec}}}

    scale = {"scale": "t", "flow2d": {}, "flow_images": {"ema_decay": 0.99}}
    plain, explicit = experiment(), experiment(ema_decay=0.99)
    # digits: the scale's EMA is 0.99, so both train the same weights and share one key
    assert model_key(plain, "m", "digits", scale) == model_key(explicit, "m", "digits", scale)
    # moons: no EMA unless asked, so an explicit 0.99 is a different model
    assert model_key(plain, "m", "moons", scale) != model_key(explicit, "m", "moons", scale)
    # without the scale nothing is assumed
    assert model_key(plain, "m", "digits") != model_key(explicit, "m", "digits")
    owners = shared_models({"a": plain, "b": explicit}, scale)
    assert sorted((o["experiment"], o["dataset"]) for o in owners.values()) == [("a", "digits"), ("a", "moons"), ("b", "moons")]


def test_a_model_with_scales_runs_only_there_with_the_key_it_has_without():
    """models/<name>/scales: elsewhere the model, the sampling entries left without a model and a coupling
    reference on it drop out (its claims find no rows: not-run); where it runs, its key is the spec's without
    scales; a model that another one's pairs_from, init or teacher needs cannot be left out alone."""
    from flowrepro.config import bind_roles, model_key

    experiment = {"id": "e", "kind": "flow", "datasets": ["moons"],
                  "models": {"a": {"path": "linear"}, "b": {"path": "vp", "scales": ["small"]}},
                  "sampling": {"euler": {"nfe": [2]}, "ddim": {"models": ["b"], "nfe": [2]},
                               "both": {"models": ["a", "b"], "nfe": [2]}},
                  "coupling_reference": {"model": "b", "sampler": "euler"}}
    tiny, small = ({"scale": name, "flow2d": {}} for name in ("tiny", "small"))
    at_tiny = bind_roles(experiment, tiny)
    assert list(at_tiny["models"]) == ["a"] and list(at_tiny["sampling"]) == ["euler", "both"]
    assert at_tiny["sampling"]["both"]["models"] == ["a"] and "coupling_reference" not in at_tiny
    at_small = bind_roles(experiment, small)
    assert list(at_small["models"]) == ["a", "b"] and list(at_small["sampling"]) == ["euler", "ddim", "both"]
    plain = {**experiment, "models": {"a": {"path": "linear"}, "b": {"path": "vp"}}}
    assert model_key(at_small, "b", "moons", small) == model_key(plain, "b", "moons", small) == model_key(experiment, "b", "moons", small)
    assert "scales" in experiment["models"]["b"]  # the loaded experiment is not changed
    experiment["models"]["c"] = {"path": "linear", "init": "b"}
    with pytest.raises(ConfigError, match=r"e: models/c/init names 'b', which its scales: leave out at scale 'tiny'"):
        bind_roles(experiment, tiny)


def test_a_model_no_sampling_entry_runs_gets_no_sample_job():
    """Sample jobs: each model on each dataset where some entry (its models: and datasets:) runs it; a model
    that is only another's parent (rectified_diffusion's 1-RF) is trained, never sampled."""
    from flowrepro.config import flow_runs

    experiment = {"id": "e", "kind": "flow", "datasets": ["moons", "digits"],
                  "models": {"parent": {}, "child": {}, "other": {}},
                  "sampling": {"euler": {"models": ["child"], "nfe": [2]},
                               "dopri5": {"models": ["other"], "datasets": ["moons"]}}}
    assert flow_runs(experiment, {}) == [("moons", "child"), ("moons", "other"), ("digits", "child")]
    experiment["sampling"]["all"] = {"nfe": [4]}
    assert len(flow_runs(experiment, {})) == 6


def test_a_models_recipes_from_trains_it_as_the_donor_does(tmp_path):
    """models/<name>/recipes_from: that model trains with the donor experiment's recipe (so a model both define
    is one file), the experiment's other models with the experiment's own; the key is not stored in the spec."""
    from flowrepro.config import model_key, training_settings

    def write(name, **fields):
        data = {"id": name, "title": name, "source": "s", "kind": "flow", "datasets": ["images"],
                "sampling": {"euler": {"nfe": [2]}}, "claims": [], **fields}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
        return tmp_path / f"{name}.yaml"

    write("teacher_paper", models={"vp": {"path": "vp", "prediction": "epsilon"}},
          recipes={"tiny": {"steps": 1600, "sources": {"steps": "ours"}}})
    write("student_paper", models={"vp": {"path": "vp", "prediction": "epsilon", "recipes_from": "teacher_paper"},
                                   "lin": {"path": "linear"}})
    teacher, student = (load_experiment(tmp_path / f"{n}.yaml") for n in ("teacher_paper", "student_paper"))
    scale = load_scale(REPO / "config/scales/tiny.yaml")
    assert "recipes_from" not in student["models"]["vp"]
    assert training_settings(scale, student, "digits", "vp")["steps"] == 1600
    assert training_settings(scale, student, "digits", "lin")["steps"] == scale["flow_images"]["steps"]
    assert model_key(student, "vp", "digits", scale) == model_key(teacher, "vp", "digits", scale)
    write("orphan_paper", models={"vp": {"path": "vp", "recipes_from": "missing_paper"}})
    with pytest.raises(ConfigError, match="models/vp/recipes_from 'missing_paper': none of"):
        load_experiment(tmp_path / "orphan_paper.yaml")


def test_min_seeds_extends_the_scales_seeds_for_cheap_benchmarks():
    from flowrepro.config import benchmark_seeds

    scale = {"seeds": [0, 1, 2]}
    assert benchmark_seeds({"kind": "sampler"}, scale) == [0, 1, 2]
    assert benchmark_seeds({"kind": "sampler", "min_seeds": 5}, scale) == [0, 1, 2, 3, 4]
    assert benchmark_seeds({"kind": "sampler", "min_seeds": 2}, scale) == [0, 1, 2]  # never fewer than the scale's
    assert benchmark_seeds({"min_seeds": 3}, {"seeds": [5, 9]}) == [5, 9, 10]


def test_a_paper_number_whose_metric_does_not_parse_fails_when_the_experiment_loads(tmp_path):
    data = yaml.safe_load((REPO / "config/experiments/score_sde.yaml").read_text())
    name = next(k for k, v in data["paper_numbers"].items() if v["metric"])
    data["paper_numbers"][name]["metric"] = "fid_inception[method=vp_eps"
    bad = tmp_path / "score_sde.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=f"paper_numbers/{name}/metric"):
        load_experiment(bad)

"""Adding a method from outside the package: pieces with options, plugins in model keys and model
files, scale files by path with overrides, plugin errors that name their experiment."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO
from flowrepro import pieces
from flowrepro.config import ConfigError, load_experiment, load_scale, model_identity, model_key, workflow_scale
from flowrepro.registry import PATHS, SAMPLERS, PluginError, load_plugins

CAF = REPO / "examples/caf_path"


def _caf_copy(tmp_path, h_default="1.5"):
    """The CAF example in a directory of its own, so a test may edit its plugin."""
    target = tmp_path / "caf_path"
    shutil.copytree(CAF, target)
    if h_default != "1.5":
        text = (target / "caf.py").read_text().replace("h: float = 1.5", f"h: float = {h_default}")
        (target / "caf.py").write_text(text)
    return target


def test_a_piece_takes_options_checked_against_its_signature():
    import flowrepro.generative.paths  # noqa: F401
    import flowrepro.generative.losses  # noqa: F401

    assert pieces.canonical({"name": "linear"}) == "linear"
    assert pieces.build("path", {"name": "linear", "sigma_min": 0.1}).sigma_min == 0.1
    density = pieces.build("time_density", {"name": "logit_normal", "std": 0.5})
    assert density.keywords == {"std": 0.5}
    with pytest.raises(ConfigError, match=r"where: probability path 'linear' has no option\(s\) \['h'\]; its options: \['sigma_min'\]"):
        pieces.check("path", {"name": "linear", "h": 2}, "where")
    with pytest.raises(ConfigError, match="unknown probability path 'lineer'.*flowrepro list path"):
        pieces.check("path", "lineer", "where")
    with pytest.raises(ConfigError, match="needs name"):
        pieces.check("path", {"sigma_min": 0.1}, "where")


def test_options_from_the_yaml_reach_the_path_and_the_model_key(tmp_path):
    experiment = load_experiment(_caf_copy(tmp_path) / "caf_path.yaml")
    from flowrepro.generative.paths import build_path

    path = build_path(experiment["models"]["caf"])
    assert type(path).__name__ == "ConstantAccelerationPath" and path.h == 1.5
    # the path is straight at varying speed: b(t) = 1.5 t - 0.5 t^2, b' = 1.5 - t
    a, b, da, db = path.coefficients(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(b, torch.tensor([0.0, 0.625, 1.0])) and torch.allclose(a + b, torch.ones(3))
    assert torch.allclose(db, torch.tensor([1.5, 1.0, 0.5])) and torch.allclose(da, -db)
    scale = load_scale(REPO / "config/scales/tiny.yaml")
    h2 = json.loads(json.dumps(experiment))
    h2["models"]["caf"]["path"]["h"] = 2.0
    assert model_key(experiment, "caf", "moons", scale) != model_key(h2, "caf", "moons", scale)
    # the reflow model's key holds its teacher's: a new h retrains both
    assert model_key(experiment, "caf_reflow", "moons", scale) != model_key(h2, "caf_reflow", "moons", scale)


def test_a_bad_option_fails_when_the_experiment_loads(tmp_path):
    folder = _caf_copy(tmp_path)
    data = yaml.safe_load((folder / "caf_path.yaml").read_text())
    data["models"]["caf"]["path"]["hh"] = 2.0
    (folder / "caf_path.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"models/caf/path: probability path 'caf' has no option\(s\) \['hh'\]; its options: \['h'\]"):
        load_experiment(folder / "caf_path.yaml")


def test_a_plugin_edit_changes_exactly_the_keys_of_models_using_its_pieces(tmp_path):
    scale = load_scale(REPO / "config/scales/tiny.yaml")
    folder = _caf_copy(tmp_path)
    experiment = load_experiment(folder / "caf_path.yaml")
    experiment["models"]["rf"] = {"path": "linear"}
    before = {m: model_key(experiment, m, "moons", scale) for m in experiment["models"]}
    assert PATHS.source("caf") == str((folder / "caf.py").resolve())
    identity = model_identity(experiment, "caf", "moons", scale)
    assert identity["plugins"] == [__import__("hashlib").sha256((folder / "caf.py").read_bytes()).hexdigest()]
    assert "caf_path" not in json.dumps(identity)  # nothing names the experiment: any experiment shares it

    other = _caf_copy(tmp_path / "edited", h_default="1.25")  # the same plugin, edited (a new file: a new module)
    PATHS._items.pop("caf"), PATHS._sources.pop("caf")  # as a new process would: one caf at a time
    edited = load_experiment(other / "caf_path.yaml")
    edited["models"]["rf"] = {"path": "linear"}
    after = {m: model_key(edited, m, "moons", scale) for m in edited["models"]}
    assert after["caf"] != before["caf"] and after["caf_reflow"] != before["caf_reflow"]
    assert after["rf"] == before["rf"]  # built-in pieces only: the plugin edit does not touch it
    # a sampler plugin is not a piece of any model: the ab3 example's model is the suite's plain 1-RF
    ab3 = load_experiment(REPO / "examples/ab3_solver/ab3_solver.yaml")
    assert model_key(ab3, "fm", "moons", scale) == model_key(load_experiment(REPO / "config/experiments/rectified_flow.yaml"), "rf1", "moons", scale)


def test_model_files_carry_their_plugins_and_refuse_an_edited_one(tmp_path, tiny_scale):
    from flowrepro.stages import sample, train

    folder = _caf_copy(tmp_path)
    data = tmp_path / "moons.npz"
    from flowrepro.stages import acquire

    acquire.run("moons", str(data), 2000, 500, 0, str(tmp_path / "dl"), None)
    out = tmp_path / "caf.pt"
    train.run_from_experiment(str(folder / "caf_path.yaml"), str(tiny_scale), "moons", "caf", str(data), str(out), progress=False)
    info, models = train.load_models(str(out))
    assert [p["file"] for p in info["plugins"]] and info["spec"]["path"] == {"name": "caf", "h": 1.5}
    pairs = tmp_path / "caf.pairs.npy"
    sample.reflow_pairs(str(tiny_scale), str(out), str(pairs))  # the stage that once failed: "unknown probability path"
    with open(folder / "caf.py", "a") as handle:
        handle.write("\n# edited\n")
    with pytest.raises(ValueError, match="caf.py has sha256 .* the model was defined with"):
        train.load_models(str(out))


def test_plugin_errors_name_the_experiment_and_the_fix(tmp_path):
    with pytest.raises(PluginError, match=r"exp.yaml: plugin 'caf' could not be imported.*listed with its \.py suffix: caf\.py"):
        load_plugins(["caf"], listed_by="exp.yaml")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('needs a GPU')\n")
    with pytest.raises(PluginError, match=r"exp.yaml: plugin '.*broken.py' raised RuntimeError while importing: needs a GPU"):
        load_plugins([str(broken)], listed_by="exp.yaml")
    folder = _caf_copy(tmp_path)
    text = (folder / "caf_path.yaml").read_text().replace("plugins: [caf.py]", "plugins: [caf]")
    (folder / "caf_path.yaml").write_text(text)
    with pytest.raises(PluginError, match=r"caf_path.yaml: plugin 'caf'.*caf\.py"):
        load_experiment(folder / "caf_path.yaml")


def test_registry_records_which_plugin_registered_a_piece():
    import flowrepro.samplers.ode  # noqa: F401

    load_plugins([str(REPO / "examples/ab3_solver/ab3.py")])
    assert SAMPLERS.source("ab3") == str(REPO / "examples/ab3_solver/ab3.py")
    assert SAMPLERS.source("euler") is None


def test_scale_by_path_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path, scale = workflow_scale({"scale": "tiny", "experiments": ["x"]}, tmp_path)
    assert path == "config/scales/tiny.yaml" and scale["seeds"] == [0, 1, 2]
    same = yaml.safe_load((REPO / "config/scales/small.yaml").read_text()) | {"experiments": ["x"]}
    assert workflow_scale(same, tmp_path)[0] == "config/scales/small.yaml"  # --configfile config/scales/small.yaml
    path, scale = workflow_scale({"scale": "config/scales/tiny.yaml", "experiments": ["x"], "seeds": [0, 1],
                                  "flow2d": {"steps": 100}}, tmp_path)
    assert path.startswith(str(tmp_path)) and scale["seeds"] == [0, 1] and scale["flow2d"]["steps"] == 100
    assert scale["flow2d"]["width"] == 128  # the rest of the section stays the file's
    assert load_scale(path) == scale
    with pytest.raises(ConfigError, match="stepz"):
        workflow_scale({"scale": "tiny", "experiments": ["x"], "flow2d": {"stepz": 100}}, tmp_path)
    with pytest.raises(ConfigError, match="experimentz"):
        workflow_scale({"scale": "tiny", "experiments": ["x"], "experimentz": ["y"]}, tmp_path)
    with pytest.raises(ConfigError, match="no such config file"):
        workflow_scale({"scale": "nowhere/trial.yaml", "experiments": ["x"]}, tmp_path)


def test_flowrepro_runs_as_a_module_without_path(tmp_path):
    run = subprocess.run([sys.executable, "-m", "flowrepro", "list", "path"], capture_output=True, text=True,
                         env={"PATH": "/nonexistent"}, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "linear" in run.stdout and "sigma_min=0.0" in run.stdout


@pytest.fixture(autouse=True)
def _restore_registries(registries_restored):
    """Every test here loads plugin copies: each starts and ends with the built-ins only."""
    yield

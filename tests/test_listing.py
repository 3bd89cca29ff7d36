"""`flowrepro list`: every registered piece with its options and summary, plugins marked; `python -m flowrepro`."""
from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from flowrepro.stages import listing


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="stage")
    listing.add_parser(sub)
    return parser.parse_args(["list", *argv])


def by_name(kind: str) -> dict[str, dict]:
    return {row["name"]: row for row in listing.rows(kind)}


@pytest.mark.parametrize("kind, expected", [
    ("path", {"linear", "vp", "trig"}),
    ("coupling", {"independent", "minibatch_ot", "reflow"}),
    ("loss", {"mse", "pseudo_huber"}),
    ("time_density", {"uniform", "logit_normal"}),
    ("sampler", {"euler", "heun", "rk4", "dopri5", "ddim"}),
    ("schedule", {"uniform", "karras"}),
    ("optimizer", {"adam", "adamw", "lion"}),
    ("problem", {"rosenbrock", "quadratic"}),
    ("metric", {"w2", "sliced_w2", "mmd"}),
    ("dataset", {"moons", "8gaussians"}),
    ("model", {"mlp", "unet"}),
])
def test_every_kind_lists_its_builtin_names(kind, expected):
    rows = listing.rows(kind)
    assert expected <= {row["name"] for row in rows}
    assert all(row["kind"] == kind for row in rows)
    assert all(row["source"] is None for row in rows if row["name"] in expected)  # built-ins are not plugins


def test_no_kind_lists_every_kind():
    assert {row["kind"] for row in listing.rows(None)} == set(listing.KIND_TABLES)


def test_options_with_their_defaults():
    assert by_name("path")["linear"]["options"] == {"sigma_min": 0.0}
    assert by_name("time_density")["logit_normal"]["options"] == {"mean": 0.0, "std": 1.0}
    # the ode solvers bind their method through a private lambda parameter: not an option
    assert by_name("sampler")["euler"]["options"] == {}
    # an option without a default is listed with Parameter.empty
    assert by_name("sampler")["euler_ts"]["options"]["data_var"] is inspect.Parameter.empty


def test_summaries():
    assert by_name("time_density")["logit_normal"]["summary"].startswith("t = sigmoid")
    assert by_name("optimizer")["adam"]["summary"] == "Kingma & Ba 2015"  # an OptimizerSpec's source
    assert not by_name("path")["linear"]["summary"].startswith("LinearPath(")  # not the dataclass's generated doc


def test_run_prints_aligned_rows(capsys):
    assert listing.run(parse("time_density")) == 0
    lines = capsys.readouterr().out.splitlines()
    line = next(line for line in lines if line.split()[0] == "logit_normal")
    assert "mean=0.0 std=1.0" in line and "t = sigmoid" in line and "[plugin:" not in line
    # summaries start in one column
    starts = {line.index(row["summary"]) for line, row in zip(lines, listing.rows("time_density")) if row["summary"]}
    assert len(starts) == 1


def test_run_without_kind_groups_by_kind(capsys):
    assert listing.run(parse()) == 0
    out = capsys.readouterr().out
    for kind in listing.KIND_TABLES:
        assert f"\n{kind}:\n" in f"\n{out}"
    assert "Kingma & Ba 2015" in out


def test_plugin_of_an_experiment_is_listed_with_its_source(capsys):
    experiment = REPO / "examples/ab3_solver/ab3_solver.yaml"
    assert listing.run(parse("sampler", "--experiment", str(experiment))) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.split()[0] == "ab3")
    assert "[plugin: " in line and line.rstrip().endswith("ab3.py]")
    row = by_name("sampler")["ab3"]
    assert Path(row["source"]).resolve() == REPO / "examples/ab3_solver/ab3.py"
    assert by_name("sampler")["euler"]["source"] is None


def test_plugins_option_loads_a_file(capsys):
    assert listing.run(parse("sampler", "--plugins", str(REPO / "examples/ab3_solver/ab3.py"))) == 0
    assert "ab3" in {line.split()[0] for line in capsys.readouterr().out.splitlines()}


def test_unknown_kind_exits_with_the_valid_kinds():
    with pytest.raises(SystemExit) as stopped:
        listing.run(parse("bogus"))
    message = str(stopped.value.code)
    assert "bogus" in message and "time_density" in message and "optimizer" in message


def test_python_m_flowrepro_runs_the_command_line():
    result = subprocess.run([sys.executable, "-m", "flowrepro", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "stages" in result.stdout

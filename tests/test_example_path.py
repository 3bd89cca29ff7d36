"""examples/caf_path and examples/ab3_solver through Snakemake, as a new user runs them: a path and
a sampler from outside src/, reflow on the plugin path, a trial scale from --configfile overrides;
then the reruns: an edit of the path plugin plans exactly its jobs again, and a model two
experiments share does not retrain when the other experiment owns it."""
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from conftest import REPO, copy_workflow

# A trial scale: the tiny scale with two seeds and shorter runs, given as overrides (nothing edited).
TRIAL = {"scale": "tiny", "seeds": [0, 1],
         "flow2d": {"n_train": 4000, "n_test": 1000, "steps": 400, "reflow_pairs": 2000, "n_eval": 500,
                    "trajectory_steps": 50, "checkpoint_every": 200}}
EXAMPLES = ["examples/caf_path/caf_path.yaml", "examples/ab3_solver/ab3_solver.yaml"]


def _snakemake(workflow, config: dict, *args, timeout=900):
    path = workflow / f"trial_{len(config['experiments'])}.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(["snakemake", "--cores", "2", "--configfile", path.name, *args], cwd=workflow,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _planned(dry_run_stdout: str) -> dict[str, int]:
    """rule -> jobs planned, from the job-stats table of a dry run."""
    table = dry_run_stdout.split("Job stats:")[1].split("Reasons:")[0] if "Job stats:" in dry_run_stdout else ""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


@pytest.mark.slow
def test_path_and_sampler_plugins_run_rerun_exactly_and_share_models(tmp_path, capsys):
    workflow = copy_workflow(tmp_path / "clone")
    for example in ("caf_path", "ab3_solver"):
        shutil.copytree(REPO / "examples" / example, workflow / "examples" / example)
    run = _snakemake(workflow, TRIAL | {"experiments": EXAMPLES})
    assert run.returncode == 0, run.stderr[-4000:]
    assert not list((workflow / "config/experiments").glob("caf_path*"))  # nothing was added under config/ or src/
    scales = list((workflow / "results/scales").glob("tiny.*.yaml"))  # the merged trial scale the jobs read
    assert len(scales) == 1 and yaml.safe_load(scales[0].read_text())["seeds"] == [0, 1]

    caf = pd.read_csv(workflow / "results/caf_path/metrics.csv")
    assert set(caf["method"]) >= {"rf", "caf", "caf_reflow"} and set(caf["seed"].dropna().astype(int)) == {0, 1}
    assert {"arc_chord_gap", "straightness", "w2"} <= set(caf["metric"])
    claims = pd.read_csv(workflow / "results/caf_path/claims.csv")
    assert set(claims["claim_id"]) == {"reflow_one_step", "reflow_straighter_paths"}
    assert set(claims["status"]) <= {"pass", "fail", "inconclusive"}

    ab3 = pd.read_csv(workflow / "results/ab3_solver/metrics.csv")
    nfe = ab3[ab3["metric"] == "nfe"]
    counted = {s: sorted(set(nfe.loc[nfe["sampler"] == s, "value"].astype(int))) for s in ("ab3", "euler", "heun", "rk4")}
    assert counted == {"ab3": [2, 4, 8, 16, 32], "euler": [2, 4, 8, 16, 32], "heun": [4, 8, 16, 32], "rk4": [4, 8, 16, 32]}
    ab3_claims = pd.read_csv(workflow / "results/ab3_solver/claims.csv")
    assert set(ab3_claims["status"]) <= {"pass", "fail", "inconclusive"} and len(ab3_claims) == 4

    # ab3's fm is caf_path's rf (and rectified_flow's rf1): owned by caf_path above, by ab3_solver here
    alone = _snakemake(workflow, TRIAL | {"experiments": EXAMPLES[1:]}, "-n")
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert set(_planned(alone.stdout)) <= {"report", "all"}, alone.stdout[-3000:]

    # an edit of the path plugin: its models, their pairs and samples, and what reads them; nothing else
    with open(workflow / "examples/caf_path/caf.py", "a") as handle:
        handle.write("\n# an edit: the models on this path are different models now\n")
    edited = _snakemake(workflow, TRIAL | {"experiments": EXAMPLES}, "-n")
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert _planned(edited.stdout) == {"train": 2, "reflow_pairs": 1, "sample": 2, "evaluate": 1, "claims": 1,
                                       "plot": 1, "report": 1, "all": 1}, edited.stdout[-3000:]
    with capsys.disabled():
        print("\n" + claims[["claim_id", "status", "observed", "threshold", "margin", "seeds_agree"]].to_string(index=False))

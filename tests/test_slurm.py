"""The workflow through the SLURM profile on a real (one-node) SLURM cluster.

Set one up with `.ci/slurm_setup.sh` (root; Debian/Ubuntu); without a working `sinfo` and an
up node these tests skip. The test cluster has no accounting, so job status comes from squeue.
"""
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, copy_workflow, shrink_scale
from flowrepro.config import load_experiment, model_key

PROFILE = "workflow/profiles/slurm"
# The tiny workflow, one experiment (--config takes several values: keep it last), up to its claims: every stage that runs on the cluster.
CONFIG = ["--config", "experiments=[rectified_flow]"]
TARGET = "results/rectified_flow/claims.csv"
_RF = load_experiment(REPO / "config/experiments/rectified_flow.yaml")
MODELS = [f"results/models/moons/{model_key(_RF, name, 'moons')}.pt" for name in ("rf1", "rf2", "rf2_distill")]
# Test-cluster settings on top of the profile: no accounting (squeue for status, no account),
# a local filesystem (short latency-wait), short polling so the tiny jobs finish quickly.
SLURM_ARGS = ["--profile", PROFILE, "--slurm-status-command", "squeue", "--slurm-no-account",
              "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5"]
JOB_ID = re.compile(r"submitted with SLURM jobid (\d+)")


def _slurm_unavailable():
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM client tools (sinfo/sbatch) not installed; run .ci/slurm_setup.sh"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm not installed; run .ci/slurm_setup.sh"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld not answering; run .ci/slurm_setup.sh"
    if out.returncode != 0:
        return f"sinfo failed ({out.stderr.strip()[:200]}); run .ci/slurm_setup.sh"
    states = {s.strip().rstrip("*~#$@") for s in out.stdout.split()}
    if not states & {"idle", "mixed", "allocated", "completing"}:
        return f"no SLURM node up (states: {sorted(states) or 'none'}); run .ci/slurm_setup.sh"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = _slurm_unavailable()
    if reason:
        pytest.skip(reason)


def workflow_copy_fast(target: Path) -> Path:
    """A copy of the workflow whose tiny scale is shrunk further (seconds per job, still on CPU).

    Both runs compared use the same copy recipe; the point is SLURM vs local, not the numbers.
    """
    import yaml

    wf = copy_workflow(target)
    scale_file = wf / "config/scales/tiny.yaml"
    scale = shrink_scale(yaml.safe_load(scale_file.read_text()), flow2d_steps=100)
    scale_file.write_text(yaml.safe_dump(scale))
    return wf


def snakemake(workdir: Path, *args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    run = subprocess.run(["snakemake", *args], cwd=workdir, capture_output=True, text=True,
                         timeout=timeout, env=env)
    log = run.stdout + run.stderr
    (workdir / f"snakemake_{len(list(workdir.glob('snakemake_*.log')))}.log").write_text(log)
    return run.returncode, log


def ran_rules(log: str) -> set:
    """Rules Snakemake started in this run (from its 'rule X:' job headers)."""
    return set(re.findall(r"^\s*(?:local)?rule (\w+):$", log, flags=re.M))


def metric_values(path: Path) -> pd.Series:
    metrics = pd.read_csv(path).drop(columns=["wall_s"])  # wall time differs run to run
    keys = [c for c in metrics.columns if c != "value"]
    metrics[keys] = metrics[keys].astype(str)  # NaN keys (no sampler, ...) compare equal as "nan"
    return metrics.set_index(keys)["value"].sort_index()


@pytest.fixture(scope="module")
def cluster_run(slurm_cluster, tmp_path_factory):
    """The workflow run once on the cluster up to its claims: ``(workdir, log)``. The second test breaks
    and repairs this same run, so the cluster trains the models once for both."""
    cluster = workflow_copy_fast(tmp_path_factory.mktemp("slurm"))
    rc, log = snakemake(cluster, TARGET, *SLURM_ARGS, *CONFIG)
    assert rc == 0, log[-3000:]
    return cluster, log


@pytest.mark.slow
def test_slurm_run_matches_local_run(cluster_run, tmp_path, capsys):
    local = workflow_copy_fast(tmp_path / "local")
    rc, log = snakemake(local, TARGET, "--cores", "2", *CONFIG)
    assert rc == 0, log[-3000:]

    cluster, log = cluster_run
    job_ids = JOB_ID.findall(log)
    # Per dataset (moons, digits): acquire, train rf1, reflow_pairs, train rf2, reflow_pairs, train
    # rf2_distill, sample x3; the digits classifier; evaluate, claims: one sbatch each.
    assert len(set(job_ids)) == 21, log[-3000:]
    with capsys.disabled():  # into the CI log, not pytest's capture
        print("\nSLURM job ids:", " ".join(job_ids))

    ours, theirs = cluster / "results/rectified_flow", local / "results/rectified_flow"
    claims, expected = pd.read_csv(ours / "claims.csv"), pd.read_csv(theirs / "claims.csv")
    assert dict(zip(claims["claim_id"], claims["status"])) == dict(zip(expected["claim_id"], expected["status"]))
    pd.testing.assert_series_equal(metric_values(ours / "metrics.csv"), metric_values(theirs / "metrics.csv"),
                                   rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_slurm_failed_job_is_reported_and_rerun_completes_only_missing_work(cluster_run, tmp_path):
    wf, _ = cluster_run  # runs after test_slurm_run_matches_local_run has compared this run (file order)
    samples = wf / "results/rectified_flow/samples/moons"
    for done in [*samples.glob("*.npz"), wf / "results/rectified_flow/metrics.csv", wf / TARGET]:
        done.unlink()  # the moons samples and what follows them are to be made again

    # Break one trained model that no other model starts from (its mtime kept, so Snakemake still
    # takes it as up to date): `sample` for it must fail on the cluster, the others' must not be affected.
    broken = wf / MODELS[2]
    backup = tmp_path / "rf2_distill.pt"
    shutil.copy2(broken, backup)
    stat = broken.stat()
    broken.write_bytes(b"not a safetensors file")
    os.utime(broken, (stat.st_atime, stat.st_mtime))

    rc, log = snakemake(wf, TARGET, *SLURM_ARGS, "--retries", "0", *CONFIG)
    assert rc != 0, log[-3000:]
    assert "Error in rule sample" in log, log[-3000:]
    assert re.search(r"SLURM-job '\d+' failed", log), log[-3000:]
    assert (samples / "rf1.npz").exists() and (samples / "rf2.npz").exists()  # the independent jobs' outputs are kept
    assert not (samples / "rf2_distill.npz").exists()
    assert not (wf / TARGET).exists()
    assert all((wf / m).exists() for m in MODELS)

    # Fix it and go again: only the failed job and what depends on it run.
    shutil.copy2(backup, broken)
    rc, log = snakemake(wf, TARGET, *SLURM_ARGS, *CONFIG)
    assert rc == 0, log[-3000:]
    assert ran_rules(log) == {"sample", "evaluate", "claims"}, log[-3000:]
    assert len(re.findall(r"^\s*rule sample:$", log, flags=re.M)) == 1
    assert len(set(JOB_ID.findall(log))) == 3
    assert (wf / TARGET).exists()

"""DVC publishing of data and results: push once, pull in a fresh clone, Snakemake recomputes nothing.

A real `dvc` and `git`, a local-directory remote in a tmp dir. The workflow runs once per module (at a
reduced scale: these tests are about caching, not training).
"""
import argparse
import filecmp
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_workflow, shrink_scale
from fake_weights import sha256_file, write_inception_format
from flowrepro import cache
from flowrepro.data import weights
from flowrepro.data.weights import FID_INCEPTION_FILE

EXPERIMENT = "rectified_flow"
JOBS_OF_EXPERIMENT = {"train", "reflow_pairs", "sample", "evaluate", "claims", "plot"}
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]

needs_dvc = pytest.mark.skipif(shutil.which("dvc") is None or shutil.which("git") is None, reason="needs dvc and git")


def sh(*command, cwd, timeout=900):
    proc = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    assert proc.returncode == 0, f"{' '.join(command)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def planned_jobs(cwd) -> dict:
    """`snakemake -n`: rule -> number of jobs it would run ({} when nothing is to be done)."""
    out = sh("snakemake", "--dry-run", "--cores", "1", cwd=cwd, timeout=300)
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)
            if m.group(1) != "total"}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """An origin git repo with the workflow run and its outputs pushed to a local DVC remote."""
    base = tmp_path_factory.mktemp("dvc")
    origin = copy_workflow(base / "origin")
    shutil.copy2(REPO / ".gitignore", origin / ".gitignore")
    (origin / "config/config.yaml").write_text(yaml.safe_dump({"scale": "tiny", "experiments": [EXPERIMENT]}))
    scale_file = origin / "config/scales/tiny.yaml"
    scale = shrink_scale(yaml.safe_load(scale_file.read_text()))
    scale_file.write_text(yaml.safe_dump(scale))
    remote = base / "remote"
    sh("git", "init", "-q", cwd=origin)
    sh("dvc", "init", "-q", cwd=origin)
    sh("dvc", "config", "core.analytics", "false", cwd=origin)
    sh("dvc", "remote", "add", "-d", "local", str(remote), cwd=origin)
    sh("git", "add", "-A", cwd=origin)
    sh(*GIT, "commit", "-qm", "workflow", cwd=origin)

    sh("snakemake", "--cores", "2", cwd=origin)
    # acquired weights are data too (small/paper acquire them): published in data.dvc with the datasets
    source = write_inception_format(base / "source" / FID_INCEPTION_FILE)
    weights.acquire("fid_inception", origin / "data/weights/fid_inception", mirror=str(source.parent),
                    digests={FID_INCEPTION_FILE: sha256_file(source)})
    pointers = cache.push(root=origin)
    assert pointers == ["data.dvc", f"results/{EXPERIMENT}.dvc", "results/models.dvc", "results/classifiers.dvc",
                        "results/report.md.dvc", "results/report.html.dvc"]
    sh("git", "add", *pointers, ".gitignore", cwd=origin)
    status = sh("git", "status", "--porcelain", cwd=origin).stdout
    assert all(line.startswith("A ") for line in status.splitlines()), status
    sh(*GIT, "commit", "-qm", "publish results", cwd=origin)
    return {"origin": origin, "remote": remote, "base": base}


def fresh_clone(published, name) -> Path:
    target = published["base"] / name
    sh("git", "clone", "-q", str(published["origin"]), str(target), cwd=published["base"])
    time.sleep(0.05)  # the checkout's mtimes strictly before the pull's
    return target


@pytest.mark.slow
@needs_dvc
def test_pull_in_fresh_clone_needs_no_recompute_and_is_identical(published):
    origin = published["origin"]
    clone = fresh_clone(published, "clone_full")
    assert not (clone / "results" / EXPERIMENT).exists()
    cache.pull(root=clone, mark=False)

    # The problem: dvc writes files in any order. Worst case, each output older than its inputs.
    now = time.time()
    for rank, path in enumerate(["results/report.html", "results/report.md", f"results/{EXPERIMENT}/claims.csv",
                                 f"results/{EXPERIMENT}/metrics.csv", f"results/{EXPERIMENT}/figures",
                                 f"results/{EXPERIMENT}/samples", "results/classifiers", "results/models", "data"]):
        for entry in [clone / path, *(clone / path).rglob("*")]:
            os.utime(entry, (now - 1000 + 10 * rank,) * 2)
    assert JOBS_OF_EXPERIMENT | {"report"} <= set(planned_jobs(clone))

    # The fix: one common mtime for everything pulled; .snakemake has no records in a fresh clone.
    assert cache.mark_up_to_date(cache.tracked_paths([EXPERIMENT], shared=lambda p: (clone / p).exists()), root=clone) > 10
    assert not (clone / ".snakemake/metadata").exists() or not any((clone / ".snakemake/metadata").iterdir())
    assert planned_jobs(clone) == {}

    for name in ("results/report.md", "results/report.html", f"results/{EXPERIMENT}/metrics.csv",
                 f"results/{EXPERIMENT}/claims.csv", "data/moons.npz", f"data/weights/fid_inception/{FID_INCEPTION_FILE}",
                 "data/weights/fid_inception/fid_inception.sha256"):
        assert filecmp.cmp(origin / name, clone / name, shallow=False), name
    figures = sorted(p.name for p in (origin / f"results/{EXPERIMENT}/figures").iterdir())
    assert any(f.endswith(".png") for f in figures)
    match, mismatch, errors = filecmp.cmpfiles(origin / f"results/{EXPERIMENT}/figures",
                                               clone / f"results/{EXPERIMENT}/figures", figures, shallow=False)
    assert sorted(match) == figures and not mismatch and not errors

    # Editing the experiment's config after the pull reruns exactly what depends on it: not the trainings,
    # whose jobs take their model as JSON, independent of the file that lists it.
    time.sleep(0.05)
    config = clone / f"config/experiments/{EXPERIMENT}.yaml"
    config.write_text(config.read_text() + "\n")
    jobs = planned_jobs(clone)
    assert set(jobs) == JOBS_OF_EXPERIMENT - {"train", "reflow_pairs"} | {"report", "all"}, jobs
    assert "acquire" not in jobs


@pytest.mark.slow
@needs_dvc
def test_pull_one_experiment_without_report_reruns_only_the_report(published):
    clone = fresh_clone(published, "clone_experiment")
    paths = cache.pull([EXPERIMENT], root=clone)
    assert paths == ["data", f"results/{EXPERIMENT}", "results/models", "results/classifiers"]
    assert not (clone / "results/report.md").exists()
    assert planned_jobs(clone) == {"report": 1, "all": 1}


@pytest.mark.slow
@needs_dvc
def test_pull_data_only_recomputes_the_experiment_but_not_acquire(published):
    clone = fresh_clone(published, "clone_data")
    assert cache.pull([], root=clone) == ["data"]
    assert (clone / "data/moons.npz").exists() and not (clone / "results" / EXPERIMENT).exists()
    jobs = planned_jobs(clone)
    assert set(jobs) == JOBS_OF_EXPERIMENT | {"classifier", "report", "all"}, jobs
    # the weights came with the data, intact, and acquiring them again needs no access to their source
    pulled = clone / "data/weights/fid_inception" / FID_INCEPTION_FILE
    digest = weights.read_manifest(pulled.parent)[FID_INCEPTION_FILE]
    assert weights.read_verified(pulled) == (published["origin"] / "data/weights/fid_inception" / FID_INCEPTION_FILE).read_bytes()
    gone = published["base"] / "no_such_mirror"  # a fetch from here would fail
    weights.acquire("fid_inception", pulled.parent, mirror=str(gone), digests={FID_INCEPTION_FILE: digest})
    assert not gone.exists() and weights.read_verified(pulled)


@pytest.mark.slow
@needs_dvc
def test_corrupted_remote_file_is_detected_and_never_used(published):
    corrupt = published["base"] / "remote_corrupt"
    shutil.copytree(published["remote"], corrupt)
    objects = sorted((p for p in (corrupt / "files").rglob("*") if p.is_file() and not p.name.endswith(".dir")),
                     key=lambda p: p.stat().st_size)
    victim = objects[-1]  # the largest object: a model or a sample file
    original = victim.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    victim.chmod(0o644)
    victim.write_bytes(bytes(flipped))

    clone = fresh_clone(published, "clone_corrupt")
    sh("dvc", "remote", "modify", "--local", "local", "url", str(corrupt), cwd=clone)
    with pytest.raises(cache.CacheError, match="(?i)checkout failed|missing"):
        cache.pull([EXPERIMENT], root=clone)  # without the report: a present report hides missing inputs
    assert sh("dvc", "config", "remote.local.verify", cwd=clone).stdout.strip() == "true"
    # The corrupted object reached neither the cache nor the workspace ...
    oid = victim.parent.name + victim.name
    assert not (clone / ".dvc/cache/files/md5" / victim.parent.name / victim.name).exists(), oid
    workspace = [p for p in (clone / "results").rglob("*") if p.is_file()]
    assert all(p.read_bytes() != bytes(flipped) for p in workspace)
    published_shared = [p for p in cache.SHARED if (clone / cache.dvc_file(p)).exists()]
    assert not all((clone / p).exists() for p in (f"results/{EXPERIMENT}", *published_shared))  # the pull stopped short
    # ... so Snakemake recomputes that experiment (the intact data was pulled and is kept).
    jobs = planned_jobs(clone)
    # (which jobs depends on where the corrupted object was: a model, a classifier or a sample file)
    assert {"evaluate", "claims"} <= set(jobs) and "acquire" not in jobs, jobs


def test_cache_cli_parser():
    parser = argparse.ArgumentParser(prog="flowrepro")
    cache.add_cache_parser(parser.add_subparsers(dest="stage", required=True))
    args = parser.parse_args(["cache", "pull", EXPERIMENT, "-r", "shared", "--no-report"])
    assert (args.cache_action, args.experiments, args.remote, args.report, args.data, args.mark, args.verify) == (
        "pull", [EXPERIMENT], "shared", False, True, True, True)
    args = parser.parse_args(["cache", "push", "--no-check"])
    assert (args.experiments, args.remote, args.report, args.check) == ([], None, None, False)
    assert cache.tracked_paths(["a", "b"], report=False) == ["data", "results/a", "results/b"]
    assert cache.tracked_paths(["a"], report=False, shared=lambda p: True) == [
        "data", "results/a", "results/models", "results/classifiers", "results/fid_reference"]
    assert cache.dvc_file("results/a") == "results/a.dvc"

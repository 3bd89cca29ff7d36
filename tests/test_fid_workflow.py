"""fid_inception in the workflow: the streaming statistics and the distance to stored statistics, the
fid-reference stage against the standalone command, the scale's settings, and the DAG the scales plan."""
import re
import subprocess

import numpy as np
import pytest
import yaml

from conftest import REPO
from fake_archives import serve_directory
from fake_weights import random_inception_in, write_random_inception
from flowrepro import cli, io
from flowrepro.config import ConfigError, load_scale
from flowrepro.data.weights import FID_INCEPTION_FILE
from flowrepro.metrics.fid import RunningMoments, feature_statistics, fid_to_statistics, frechet_distance
from flowrepro.stages import fid_reference


def flow_experiments_with_images() -> int:
    """Flow experiments of config/config.yaml that list the images role."""
    names = yaml.safe_load((REPO / "config/config.yaml").read_text())["experiments"]
    configs = [yaml.safe_load((REPO / f"config/experiments/{n}.yaml").read_text()) for n in names]
    return sum(c["kind"] == "flow" and "images" in c.get("datasets", []) for c in configs)


@pytest.mark.parametrize("n", [5, 300])  # fewer samples than dimensions (the n x n route), and more
def test_fid_to_statistics_equals_the_frechet_distance_of_the_fitted_gaussians(n):
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((400, 40)) @ rng.standard_normal((40, 40)) / 6 + 0.3
    samples = rng.standard_normal((n, 40)) * 1.5 + 0.1
    mu, sigma = feature_statistics(reference)
    expected = frechet_distance(*feature_statistics(samples), mu, sigma)
    assert fid_to_statistics(samples, mu, sigma) == pytest.approx(expected, rel=1e-9)
    assert fid_to_statistics(reference[:n], mu, sigma) < expected  # nearer to its own statistics


def test_running_moments_equal_the_whole_set_statistics():
    rng = np.random.default_rng(1)
    features = 1e3 + rng.standard_normal((103, 7)) * [1, 2, 3, 4, 5, 6, 1e-3]  # a large offset: the shift keeps precision
    moments = RunningMoments()
    for start in range(0, 103, 10):
        moments.add(features[start:start + 10])
    mu, sigma = moments.statistics()
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-15)
    assert moments.n == 103


def test_settings_of_each_scale_and_their_errors():
    settings = {name: fid_reference.settings(load_scale(REPO / f"config/scales/{name}.yaml"))
                for name in ("tiny", "small", "paper", "smoke")}
    assert settings["tiny"] is None  # tiny: no rows, no jobs
    assert (settings["paper"]["samples"], settings["small"]["samples"], settings["smoke"]["samples"]) == (50000, 10000, None)
    assert settings["paper"]["sha256"].startswith("6726825d")  # the pinned weights
    assert fid_reference.reference_file("cifar10", settings["paper"]["sha256"]) == "results/fid_reference/cifar10.6726825d.npz"
    small = yaml.safe_load((REPO / "config/scales/small.yaml").read_text())
    with pytest.raises(ConfigError, match="fid_inception/samples = 20000 exceeds flow_images/n_eval = 10000"):
        fid_reference.settings(small | {"fid_inception": {"samples": 20000}}, "small.yaml")
    with pytest.raises(ConfigError, match="add fid_inception to downloads/weights"):
        fid_reference.settings(small | {"downloads": {}}, "small.yaml")
    other = small | {"downloads": {"weights": ["fid_inception"], "digests": {FID_INCEPTION_FILE: "ab" * 32}}}
    assert fid_reference.settings(other)["sha256"] == "ab" * 32  # other weights, another reference file


@pytest.fixture(scope="module")
def acquired(tmp_path_factory):
    """The generated full-size Inception acquired as the workflow does, and a small generated image dataset."""
    root = tmp_path_factory.mktemp("fidwf")
    www = root / "www"
    _, sha256 = random_inception_in(www, tmp_path_factory)
    with serve_directory(www) as url:
        assert cli.main(["acquire", "--weights", "fid_inception", "--out", str(root / "data/weights/fid_inception"),
                         "--mirror", url, "--digest", f"{FID_INCEPTION_FILE}={sha256}"]) == 0
    rng = np.random.default_rng(0)
    data = root / "data/cifar10.npz"
    io.save_npz(data, train=np.tanh(rng.standard_normal((3, 3, 32, 32))).astype(np.float32),
                test=np.tanh(rng.standard_normal((2, 3, 32, 32))).astype(np.float32))
    io.write_checksum(data)
    return root, root / "data/weights/fid_inception" / FID_INCEPTION_FILE, sha256, data


def test_reference_statistics_agree_with_the_standalone_command_on_the_training_split(acquired, capsys):
    root, weights, sha256, data = acquired
    out = root / fid_reference.reference_file("cifar10", sha256)
    assert cli.main(["fid-reference", "--data", str(data), "--inception-weights", str(weights), "--out", str(out),
                     "--batch-size", "2", "--device", "cpu"]) == 0  # two batches: the streaming sums are exercised
    stats = io.load_data(out)  # checked against the .sha256 the stage wrote
    assert (int(stats["n"]), str(stats["split"]), str(stats["weights_sha256"])) == (3, "train", sha256)
    assert str(stats["data_sha256"]) == io.sha256_file(data)

    samples = root / "samples.npz"
    rng = np.random.default_rng(1)
    io.save_npz(samples, **{"euler/uniform/steps=1/seed0": np.tanh(rng.standard_normal((2, 3, 32, 32))).astype(np.float32)})
    capsys.readouterr()
    for flag, value in (("--reference-stats", out), ("--reference", data)):  # stored train statistics == train split
        assert cli.main(["fid", "--samples", str(samples), "--inception-weights", str(weights), flag, str(value)]) == 0
    by_stats, by_split = (float(line.rsplit("\t", 1)[1]) for line in capsys.readouterr().out.strip().splitlines())
    assert by_stats > 0 and by_stats == pytest.approx(by_split, rel=1e-6)


def test_statistics_of_other_weights_are_refused(acquired, tmp_path):
    root, weights, sha256, data = acquired
    other = write_random_inception(tmp_path / "other.pth", seed=1)
    stats = tmp_path / "ref.npz"
    io.save_npz(stats, mu=np.zeros(2048), sigma=np.eye(2048), n=10, weights_sha256=io.sha256_file(other))
    with pytest.raises(ValueError, match=f"computed with weights of sha256 {io.sha256_file(other)}, not those of"):
        cli.main(["fid", "--samples", str(data), "--inception-weights", str(weights), "--reference-stats", str(stats)])
    io.write_checksum(stats)
    fid = {"samples": None, "batch_size": 4, "weights": str(weights), "sha256": sha256}
    with pytest.raises(ValueError, match="rerun `flowrepro fid-reference`"):
        fid_reference.InceptionFID(fid, [str(stats)], str(weights), "cpu")


def planned(workflow_copy, scale: str) -> str:
    run = subprocess.run(["snakemake", "-n", "-p", "--cores", "1", "--configfile", f"config/scales/{scale}.yaml"],
                         cwd=workflow_copy, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def jobs(plan: str, rule: str) -> list[str]:
    """The dry run's printed block of every job of ``rule``."""
    return [block for block in re.split(r"\n(?=\[\w{3} \w{3} )", plan) if re.search(rf"^rule {rule}:$", block, re.M)]


@pytest.mark.parametrize("scale,images", [("paper", "cifar10"), pytest.param("small", "mnist", marks=pytest.mark.slow)])
def test_dry_run_plans_the_reference_once_and_fid_rows_for_every_image_model(workflow_copy, scale, images):
    plan = planned(workflow_copy, scale)
    reference = f"results/fid_reference/{images}.6726825d.npz"
    (acquire,) = jobs(plan, "acquire_weights")
    assert "output: data/weights/fid_inception/fid_inception.sha256" in acquire
    (job,) = jobs(plan, "fid_reference")  # once per dataset, named by the pinned weights' hash
    assert f"output: {reference}," in job and f"data/{images}.npz" in job
    assert "--inception-weights data/weights/fid_inception/weights-inception-2015-12-05-6726825d.pth" in job
    evaluates = jobs(plan, "evaluate")
    on_images = [block for block in evaluates if f"data/{images}.npz" in block]
    assert len(on_images) == flow_experiments_with_images() > 0
    for block in on_images:  # every flow experiment scores its image models' samples with Inception
        assert f"samples/{images}/" in block and f"--fid-references {reference}" in block, block[:500]
    assert all("--inception-weights" not in block for block in evaluates if block not in on_images)  # 2-D only


@pytest.mark.slow
def test_tiny_plans_no_inception_jobs(workflow_copy):
    plan = planned(workflow_copy, "tiny")
    assert not jobs(plan, "fid_reference") and not jobs(plan, "acquire_weights")
    assert jobs(plan, "evaluate") and "--inception-weights" not in plan and "fid_reference" not in plan

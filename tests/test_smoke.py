"""The smoke scale: the paper-scale DAG (CIFAR-10 as the images role, the papers' networks and recipes,
one job per seed) from acquire to report on a CPU, on generated CIFAR-10- and MNIST-format archives and a
generated full-size FID-Inception weights file and a generated pretrained DDPM (diffusers format, 32x32),
served from a local HTTP server through the real acquire code and its checksums. The pretrained network
runs in an experiment written here (its samplers only; its trained model is rectified flow's 1-RF on moons)."""
import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from fake_archives import serve_directory, write_cifar10_archive, write_mnist_archives
from fake_weights import random_inception_in, write_tiny_ddpm
from flowrepro.data.weights import FID_INCEPTION_FILE


@pytest.mark.slow
def test_smoke_scale_runs_the_paper_dag_end_to_end(workflow_copy, capsys, tmp_path_factory):
    www = workflow_copy / "www"
    digests = write_cifar10_archive(www, n_train=40, n_test=20, seed=0) | write_mnist_archives(www, 30, 20, seed=0)
    _, inception_sha256 = random_inception_in(www, tmp_path_factory)  # random weights, the real format and size
    digests[FID_INCEPTION_FILE] = inception_sha256
    digests |= write_tiny_ddpm(www, sample_size=32)  # config.json, scheduler_config.json, the safetensors weights
    (workflow_copy / "pretrained_samplers.yaml").write_text(yaml.safe_dump(PRETRAINED_SAMPLERS, sort_keys=False))
    scale_file = workflow_copy / "config/scales/smoke.yaml"
    scale = yaml.safe_load(scale_file.read_text())
    with serve_directory(www) as url:
        scale["downloads"] |= {"mirror": url, "digests": digests}  # keeps its weights: fid_inception, ddpm_cifar10_pretrained
        scale_file.write_text(yaml.safe_dump(scale, sort_keys=False))
        run = subprocess.run(["snakemake", "all", "data/mnist.npz", "--cores", "2", "--configfile", "config/scales/smoke.yaml",
                              "--config", "experiments=[rectified_flow, pretrained_samplers.yaml]"],
                             cwd=workflow_copy, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-4000:]

    mnist = np.load(workflow_copy / "data/mnist.npz")
    assert mnist["train"].shape == (30, 1, 32, 32)  # padded to 32x32, through the real download code
    results = workflow_copy / "results"
    metrics = pd.read_csv(results / "rectified_flow/metrics.csv")
    assert set(metrics["dataset"]) == {"moons", "cifar10"} and set(metrics["scale"]) == {"smoke"}
    images = metrics[metrics["dataset"] == "cifar10"]
    assert set(images["seed"]) == {0, 1}
    assert (images["metric"] == "fid_classifier").any() and images["value"].notna().all()
    # the papers' FID beside the classifier's: one fid_inception row for every fid_classifier row, all finite
    inception, classifier = (images[images["metric"] == m].drop(columns=["metric", "value", "wall_s"]).astype(str)
                             for m in ("fid_inception", "fid_classifier"))
    assert len(inception) > 0 and inception.to_dict("records") == classifier.to_dict("records")
    fid = images[images["metric"] == "fid_inception"]
    assert np.isfinite(fid["value"]).all() and (fid["value"] > 0).all()
    reference = results / f"fid_reference/cifar10.{inception_sha256[:8]}.npz"  # named by the weights it used
    assert reference.exists() and (workflow_copy / "data/weights/fid_inception/fid_inception.sha256").exists()
    provenance = json.loads((results / "rectified_flow/provenance.json").read_text())
    assert inception_sha256 in json.dumps(provenance) and "40 training images" in json.dumps(provenance)
    claims = pd.read_csv(results / "rectified_flow/claims.csv")
    assert set(claims[claims["claim_id"].str.endswith("_images")]["status"]) <= {"pass", "fail", "inconclusive"}  # evaluated on cifar10 rows
    assert "rectified_flow" in (results / "report.html").read_text()

    # the pretrained network: acquired, sampled by each scheduler at its counted NFE, scored, and in the report's table
    assert (workflow_copy / "data/weights/ddpm_cifar10_pretrained/ddpm_cifar10_pretrained.sha256").exists()
    pretrained = pd.read_csv(results / "pretrained_samplers/metrics.csv")
    pretrained = pretrained[pretrained["method"] == "ddpm_cifar10"]
    scored = pretrained[pretrained["metric"] == "fid_inception"]
    assert set(scored["dataset"]) == {"cifar10"} and set(scored["seed"]) == {0, 1} and np.isfinite(scored["value"]).all()
    assert sorted(set(zip(scored["sampler"], scored["nfe"]))) == [("ddim", 2), ("ddim", 4), ("ddim_ts", 4), ("dpmsolver2m", 4)]
    report = (results / "report.md").read_text()
    assert "## Samplers on the pretrained ddpm_cifar10 (cifar10)" in report and "| ddim_ts " in report

    seed_files = sorted(p.name for p in (results / "models/cifar10").glob("*.pt"))
    assert len(seed_files) == 6 and all(re.fullmatch(r"[0-9a-f]{12}\.seed[01]\.pt", n) for n in seed_files)
    assert len(list((results / "models/cifar10").glob("*.seed[01].pairs.npy"))) == 4  # rf1's and rf2's, per seed
    logs = "\n".join(p.read_text() for p in (workflow_copy / "logs/train/cifar10").glob("*.log"))
    counts = sorted(set(re.findall(r"network (.+), ([0-9.]+) M parameters", logs)))
    benchmarks = {rule: pd.read_csv(workflow_copy / path, sep="\t")["s"].sum() for rule, path in (
        ("acquire_weights", "logs/benchmarks/acquire_weights/fid_inception.tsv"),
        ("fid_reference", f"logs/benchmarks/fid_reference/cifar10.{inception_sha256[:8]}.tsv"),
        ("evaluate", "logs/benchmarks/evaluate/rectified_flow.tsv"))}
    table = fid.groupby(["method", "nfe"])["value"].agg(["mean", "std"]).round(3)
    with capsys.disabled():
        print("\nsmoke scale networks:", "; ".join(f"{net}: {m} M" for net, m in counts))
        print("smoke job times (s):", ", ".join(f"{rule} {s:.1f}" for rule, s in benchmarks.items()))
        print(f"smoke fid_inception (random Inception weights, {len(fid)} rows, mean/std over 2 seeds):\n{table}")
    assert counts and all(float(m) == pytest.approx(35.75, rel=0.01) for _, m in counts)


#: An experiment of samplers on the pretrained network (and a 2-D model shared with rectified_flow).
PRETRAINED_SAMPLERS = {
    "id": "pretrained_samplers", "title": "smoke: samplers on a generated pretrained DDPM", "source": "tests/test_smoke.py",
    "kind": "flow", "datasets": ["moons"], "models": {"rf1": {"path": "linear"}},
    "pretrained": {"ddpm_cifar10": {"weights": "ddpm_cifar10_pretrained", "dataset": "cifar10"}},
    "sampling": {"euler": {"nfe": [2], "models": ["rf1"]},
                 "ddim": {"nfe": [2, 4], "models": ["ddpm_cifar10"]},
                 "dpmsolver2m": {"nfe": [4], "models": ["ddpm_cifar10"]},
                 "ddim_ts": {"nfe": [4], "window": 30, "cutoff": 300, "models": ["ddpm_cifar10"]}},
    "claims": [],
}

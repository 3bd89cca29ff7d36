"""The smoke scale: the paper-scale DAG (CIFAR-10 as the images role, the papers' networks and recipes,
one job per seed) from acquire to report on a CPU, on generated CIFAR-10- and MNIST-format archives
served from a local HTTP server through the real acquire code and its checksums."""
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from fake_archives import serve_directory, write_cifar10_archive, write_mnist_archives


@pytest.mark.slow
def test_smoke_scale_runs_the_paper_dag_end_to_end(workflow_copy, capsys):
    www = workflow_copy / "www"
    digests = write_cifar10_archive(www, n_train=40, n_test=20, seed=0) | write_mnist_archives(www, 30, 20, seed=0)
    scale_file = workflow_copy / "config/scales/smoke.yaml"
    scale = yaml.safe_load(scale_file.read_text())
    with serve_directory(www) as url:
        scale["downloads"] = {"mirror": url, "digests": digests}
        scale_file.write_text(yaml.safe_dump(scale, sort_keys=False))
        run = subprocess.run(["snakemake", "all", "data/mnist.npz", "--cores", "2", "--configfile", "config/scales/smoke.yaml",
                              "--config", "experiments=[rectified_flow]"],
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
    claims = pd.read_csv(results / "rectified_flow/claims.csv")
    assert set(claims[claims["claim_id"].str.endswith("_images")]["status"]) <= {"pass", "fail", "inconclusive"}  # evaluated on cifar10 rows
    assert "rectified_flow" in (results / "report.html").read_text()

    seed_files = sorted(p.name for p in (results / "models/cifar10").glob("*.pt"))
    assert len(seed_files) == 6 and all(re.fullmatch(r"[0-9a-f]{12}\.seed[01]\.pt", n) for n in seed_files)
    assert len(list((results / "models/cifar10").glob("*.seed[01].pairs.npy"))) == 4  # rf1's and rf2's, per seed
    logs = "\n".join(p.read_text() for p in (workflow_copy / "logs/train/cifar10").glob("*.log"))
    counts = sorted(set(re.findall(r"network (.+), ([0-9.]+) M parameters", logs)))
    with capsys.disabled():
        print("\nsmoke scale networks:", "; ".join(f"{net}: {m} M" for net, m in counts))
    assert counts and all(float(m) == pytest.approx(35.75, rel=0.01) for _, m in counts)

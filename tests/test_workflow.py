"""The tiny workflow end to end through Snakemake, as a user runs it."""
import subprocess

import pandas as pd
import pytest

from flowrepro.io import TIDY_COLUMNS

TRIAL = ["--configfile", "trial.yaml"]  # written by the test (TRIAL_SCALE)
#: A trial run of the tiny scale (README: "A scale of your own, or a shorter trial run"): two seeds, half the
#: training steps and pairs, half the evaluation samples, half the optimizer steps. Every experiment, stage and
#: code path of the default workflow, in about half its job time; the README's results come from the full run.
#: overrides: every image model 200 steps, score_sde's tiny recipe (1600) included.
TRIAL_SCALE = """seeds: [0, 1]
flow2d: {steps: 1000, reflow_pairs: 5000, n_eval: 500}
flow_images: {steps: 200, reflow_pairs: 800, n_eval: 150, overrides: {steps: 200}}
optimizers: {step_scale: 0.5}
"""


@pytest.mark.slow
def test_tiny_workflow_end_to_end_then_nothing_to_do(workflow_copy):
    # Every experiment and stage of the default workflow on a trial scale (TRIAL_SCALE) to keep CI in budget.
    # The timeout is a hang guard, not a speed target.
    (workflow_copy / "trial.yaml").write_text(TRIAL_SCALE)
    run = subprocess.run(["snakemake", "--cores", "2", *TRIAL], cwd=workflow_copy, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    results = workflow_copy / "results"
    metrics = pd.read_csv(results / "rectified_flow/metrics.csv")
    assert list(metrics.columns) == TIDY_COLUMNS
    assert set(metrics["seed"]) == {0, 1}
    nfe = metrics[(metrics["metric"] == "nfe") & (metrics["sampler"] == "euler")]
    assert sorted(set(nfe["value"].astype(int))) == [1, 2, 4, 8, 16]
    dopri = metrics[(metrics["metric"] == "nfe") & (metrics["sampler"] == "dopri5")]
    assert (dopri["value"] >= 6).all()  # counted from real calls, not assumed

    claims = pd.read_csv(results / "rectified_flow/claims.csv")
    assert set(claims["claim_id"]) == {"reflow_straightens", "one_step_far_better", "reflow_straightens_images",
                                       "one_step_far_better_images", "distill_improves_one_step",
                                       "distill_improves_one_step_images"}
    assert set(claims["status"]) <= {"pass", "fail", "inconclusive"}  # all ran; each verdict is a result
    assert claims["observed"].notna().all() and claims["threshold"].notna().all()

    for figure in ("quality_vs_nfe", "samples_moons", "trajectories_moons", "samples_digits"):
        assert (results / f"rectified_flow/figures/{figure}.png").stat().st_size > 1000
        assert (results / f"rectified_flow/figures/{figure}.pdf").exists()
    html = (results / "report.html").read_text()
    assert "rectified_flow" in html and "reflow_straightens" in html and "figures/quality_vs_nfe.png" in html
    assert list((workflow_copy / "logs/benchmarks/train/digits").glob("*.tsv"))
    for experiment in ("stochastic_interpolants", "consistency_fm", "score_sde", "improved_rf", "multisample_fm",
                       "flow_matching", "rectified_flow"):  # every flow paper ran on 2-D data and on digits
        table = pd.read_csv(results / f"{experiment}/metrics.csv")
        assert "digits" in set(table["dataset"]) and len(set(table["dataset"])) == 2, experiment
        assert (table[table["dataset"] == "digits"]["metric"] == "fid_classifier").any(), experiment

    boss = pd.read_csv(results / "boss_trained/metrics.csv")  # BOSS estimated on trained models, solver error beside W2
    assert {"euler_boss", "dpmsolver2m_boss"} <= set(boss["sampler"])
    assert (boss[(boss["metric"] == "solver_error")]["dataset"] == "8gaussians").all()
    for experiment in ("boss_trained", "time_shift_trained", "flow_solvers_trained", "boss_diffusion"):
        verdicts = pd.read_csv(results / f"{experiment}/claims.csv")["status"]
        assert len(verdicts) and set(verdicts) <= {"pass", "fail", "inconclusive"}, experiment

    again = subprocess.run(["snakemake", "--cores", "2", "-n", *TRIAL], cwd=workflow_copy, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    zipped = subprocess.run(["snakemake", "--report", "results/report.zip", *TRIAL], cwd=workflow_copy, capture_output=True, text=True, timeout=300)
    assert zipped.returncode == 0, zipped.stderr[-2000:]
    assert (results / "report.zip").stat().st_size > 10_000

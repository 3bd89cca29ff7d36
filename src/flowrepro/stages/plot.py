"""plot: draw a flow experiment's figures into results/<experiment>/figures/."""
from __future__ import annotations

from pathlib import Path

from flowrepro import io
from flowrepro.config import load_experiment



def run(experiment_file: str, metrics_file: str, data_files: list[str], sample_files: list[str], out_dir: str) -> None:
    """Flow experiments: quality_vs_nfe (and solver_error_vs_nfe), then per dataset samples_<dataset> and (2-D) trajectories_<dataset>."""
    import matplotlib

    matplotlib.use("Agg")
    from flowrepro.config import IMAGE_DATASETS
    from flowrepro.plots import flow

    experiment = load_experiment(experiment_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if experiment["kind"] != "flow":
        from flowrepro.stages import benchmark

        for target in benchmark.plot(experiment_file, metrics_file, out_dir):
            print(f"plot: wrote {target}")
        return
    table = io.read_table(metrics_file)
    targets = [str(out / "quality_vs_nfe.png")]
    flow.quality_vs_nfe(table, targets[0])
    if (table["metric"] == "solver_error").any():  # experiments with a reference: solve
        targets.append(str(out / "solver_error_vs_nfe.png"))
        flow.quality_vs_nfe(table, targets[-1], metric="solver_error")
    for data_file in data_files:
        dataset = Path(data_file).name.removesuffix(".npz")
        mine = [p for p in sample_files if _sample_dataset(p) == dataset]
        targets.append(str(out / f"samples_{dataset}.png"))
        flow.samples(mine, data_file, targets[-1])
        if dataset not in IMAGE_DATASETS:
            targets.append(str(out / f"trajectories_{dataset}.png"))
            flow.trajectories(mine, targets[-1])
    for target in targets:
        print(f"plot: wrote {target}")


def _sample_dataset(sample_file: str) -> str:
    import json

    with io.open_npz(sample_file) as arrays:  # reads the run index only
        return json.loads(str(arrays["runs"]))["dataset"]

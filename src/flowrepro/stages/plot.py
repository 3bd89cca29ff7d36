"""plot: draw a flow experiment's figures into results/<experiment>/figures/."""
from __future__ import annotations

from pathlib import Path

from flowrepro import io
from flowrepro.config import load_experiment

#: Figures every flow experiment gets (the plot rule lists the same names).
FLOW_FIGURES = ("w2_vs_nfe", "samples", "trajectories")


def run(experiment_file: str, metrics_file: str, data_files: list[str], sample_files: list[str], out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
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
    for figure in FLOW_FIGURES:
        target = str(out / f"{figure}.png")
        if figure == "w2_vs_nfe":
            flow.w2_vs_nfe(table, target)
        elif figure == "samples":
            flow.samples(sample_files, data_files[0], target)
        elif figure == "trajectories":
            flow.trajectories(sample_files, target)
        print(f"plot: wrote {target}")

"""Seaborn figures of an optimizer experiment: training curves with seed bands, lr sensitivity,
and the performance profile. Each returns the PNG paths it wrote (PDF beside each)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from flowrepro import io
from flowrepro.plots.flow import save_figure


def plot_optimizer_experiment(metrics_csv: str, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = io.read_table(metrics_csv)
    table["metric"] = table["metric"].astype(str)
    written: list[str] = []
    curves = table[table["metric"].str.startswith("curve_")].copy()
    for dataset, rows in curves.groupby("dataset"):
        rows = rows.assign(step=pd.to_numeric(rows["nfe"]), value=pd.to_numeric(rows["value"]))
        metrics = sorted(rows["metric"].unique())
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            sns.lineplot(data=rows[rows["metric"] == metric], x="step", y="value", hue="method", errorbar="sd", ax=ax)
            ax.set(title=f"{dataset}", ylabel=metric.removeprefix("curve_"))
            if metric.endswith("loss") and (rows["value"] > 0).all():
                ax.set_yscale("log")
        target = str(Path(out_dir) / f"curves_{dataset}.png")
        save_figure(fig, target)
        plt.close(fig)
        written.append(target)

    sweeps = table[table["metric"].str.startswith("sweep_")].copy()
    if not sweeps.empty:
        sweeps["lr"] = pd.to_numeric(sweeps["optimizer"].astype(str).str.extract(r"lr=([0-9.eE+-]+)")[0])
        sweeps["value"] = pd.to_numeric(sweeps["value"])
        grid = sns.relplot(data=sweeps, x="lr", y="value", hue="method", col="dataset", kind="line", marker="o",
                           errorbar="sd", facet_kws={"sharey": False}, height=3.2, col_wrap=min(3, sweeps["dataset"].nunique()))
        grid.set(xscale="log")
        target = str(Path(out_dir) / "lr_sensitivity.png")
        save_figure(grid.figure, target)
        plt.close(grid.figure)
        written.append(target)

    profile = table[table["metric"].str.startswith("perf_profile_tau=")].copy()
    if not profile.empty:
        profile["tau"] = pd.to_numeric(profile["metric"].str.removeprefix("perf_profile_tau="))
        profile["value"] = pd.to_numeric(profile["value"])
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        sns.lineplot(data=profile, x="tau", y="value", hue="method", drawstyle="steps-post", ax=ax)
        ax.set(xscale="log", xlabel="tau (times the best time to target)", ylabel="fraction of problems solved")
        target = str(Path(out_dir) / "performance_profile.png")
        save_figure(fig, target)
        plt.close(fig)
        written.append(target)
    return written

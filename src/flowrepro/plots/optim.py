"""Seaborn figures of an optimizer experiment: training curves with seed bands, lr sensitivity,
the performance profile, the largest stable lr against batch size, and the optimizers' paths
on the 2-D test functions (from ``trajectories.npz`` beside the metrics). Each returns the PNG
paths it wrote (PDF beside each)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
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

    if (table["metric"] == "max_stable_lr").any():
        written.append(lr_vs_batch(table, str(Path(out_dir) / "lr_vs_batch.png")))
    trajectory_file = Path(metrics_csv).with_name("trajectories.npz")
    if trajectory_file.exists():
        written.extend(trajectories(str(trajectory_file), out_dir))
    return written


def lr_vs_batch(table: pd.DataFrame, out_png: str) -> str:
    """Largest stable lr against batch size, log-log, mean and seed range per optimizer.

    The legend gives each optimizer's fitted exponent (slope of log lr* on log B; mean ± std over
    seeds of the ``lr_exponent`` rows, the number the claims test); the dashed line has that
    slope through the geometric mean of the points. Grey guides: slopes 1 and 1/2 (Granziol et
    al.'s predictions for SGD and Adam).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = table[table["metric"] == "max_stable_lr"].copy()
    rows["batch"] = pd.to_numeric(rows["optimizer"].astype(str).str.extract(r"batch=(\d+)")[0])
    rows["value"] = pd.to_numeric(rows["value"])
    rows = rows[np.isfinite(rows["value"]) & (rows["value"] > 0)]
    exponents = table[table["metric"] == "lr_exponent"].assign(value=lambda d: pd.to_numeric(d["value"]))
    fig, ax = plt.subplots(figsize=(5.2, 3.9))
    methods = list(dict.fromkeys(rows["method"]))
    palette = dict(zip(methods, sns.color_palette(n_colors=max(len(methods), 1))))
    for method in methods:
        part = rows[rows["method"] == method]
        slope = exponents[exponents["method"] == method]["value"]
        slope = slope[np.isfinite(slope)]
        mean = part.groupby("batch")["value"].apply(lambda v: float(np.exp(np.log(v).mean())))
        low, high = part.groupby("batch")["value"].min(), part.groupby("batch")["value"].max()
        label = f"{method}: exponent {slope.mean():.2f} ± {slope.std(ddof=1) if len(slope) > 1 else 0:.2f} (n={len(slope)})"
        ax.errorbar(mean.index, mean.values, yerr=[mean.values - low.values, high.values - mean.values],
                    marker="o", ls="none", capsize=3, color=palette[method], label=label)
        if len(slope) and len(mean) > 1:
            b = np.array(mean.index, dtype=float)
            center_b, center_lr = np.exp(np.log(b).mean()), np.exp(np.log(mean.values).mean())
            ax.plot(b, center_lr * (b / center_b) ** slope.mean(), ls="--", color=palette[method], lw=1)
    if len(rows):
        b = np.array(sorted(rows["batch"].unique()), dtype=float)
        anchor = float(np.exp(np.log(rows["value"]).mean()))
        for power, style in ((1.0, ":"), (0.5, "-.")):
            ax.plot(b, anchor * (b / np.exp(np.log(b).mean())) ** power, ls=style, color="grey", lw=0.8,
                    label=f"slope {power:g} (guide)")
    ax.set(xscale="log", yscale="log", xlabel="batch size B", ylabel="largest stable lr (geo. mean, seed range)",
           title=str(rows["dataset"].iloc[0]) if len(rows) else "")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    if len(rows):
        ax.set_xticks(sorted(rows["batch"].unique()))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(base=2))  # the lr grids are factor-2 ladders
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)
    save_figure(fig, out_png)
    plt.close(fig)
    return out_png


def trajectories(trajectory_file: str, out_dir: str) -> list[str]:
    """Per 2-D problem: the contour plot of the function with each optimizer's paths (chosen lr).

    First panel: every optimizer's seed-0 path together; then one panel per optimizer with all
    its seeds (start: dot, end: cross, global minimum: star). Rosenbrock's contours are log-spaced.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.colors import LogNorm

    from flowrepro import io
    from flowrepro.optim.problems import SURFACES

    arrays = io.load_npz(trajectory_file)
    runs = json.loads(str(arrays["index"]))["runs"]
    written = []
    for problem in dict.fromkeys(r["problem"] for r in runs):
        fn, optimum, (x0, x1, y0, y1) = SURFACES[problem]
        mine = [r for r in runs if r["problem"] == problem]
        methods = list(dict.fromkeys(r["optimizer"] for r in mine))
        palette = dict(zip(methods, sns.color_palette("tab10", n_colors=max(len(methods), 1))))
        xs, ys = np.linspace(x0, x1, 200), np.linspace(y0, y1, 200)
        grid_x, grid_y = np.meshgrid(xs, ys)
        z = fn(np.stack([grid_x, grid_y]))
        ncols = min(3, len(methods) + 1)
        nrows = math.ceil((len(methods) + 1) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.1 * nrows), squeeze=False,
                                 sharex=True, sharey=True)
        panels = [("all optimizers, seed 0", methods)] + [(m, [m]) for m in methods]
        for ax, (title, shown) in zip(axes.flat, panels):
            if problem == "rosenbrock":
                ax.contourf(grid_x, grid_y, z + 1e-3, levels=np.logspace(-3, 3.5, 14), norm=LogNorm(),
                            cmap="Greys", alpha=0.55)
            else:
                ax.contourf(grid_x, grid_y, z, levels=14, cmap="Greys", alpha=0.55)
            for run in mine:
                if run["optimizer"] not in shown or (len(shown) > 1 and run["seed"] != min(r["seed"] for r in mine)):
                    continue
                path = arrays[run["key"]]
                color = palette[run["optimizer"]]
                label = f"{run['optimizer']} (lr {run['lr']:g})" if len(shown) > 1 else None
                ax.plot(path[:, 0], path[:, 1], lw=1.0, color=color, alpha=0.9, label=label)
                ax.scatter(path[0, 0], path[0, 1], s=12, color=color, zorder=3)
                ax.scatter(path[-1, 0], path[-1, 1], s=30, marker="x", color=color, zorder=3)
            ax.scatter(*optimum, marker="*", s=90, color="gold", edgecolor="k", zorder=4)
            if len(shown) == 1:
                ends = [fn(arrays[r["key"]][-1]) for r in mine if r["optimizer"] == title]
                lr = next(r["lr"] for r in mine if r["optimizer"] == title)
                title = f"{title} (lr {lr:g}): final f {np.median(ends):.2g}"
            else:
                ax.legend(fontsize=6, loc="best")
            ax.set_title(title, fontsize=8)
            ax.set(xlim=(x0, x1), ylim=(y0, y1))
        for ax in list(axes.flat)[len(panels):]:
            ax.set_axis_off()
        fig.suptitle(f"{problem}: paths at each optimizer's chosen lr ({len(set(r['seed'] for r in mine))} starts)",
                     fontsize=10)
        fig.tight_layout()
        target = str(Path(out_dir) / f"trajectories_{problem}.png")
        save_figure(fig, target)
        plt.close(fig)
        written.append(target)
    return written

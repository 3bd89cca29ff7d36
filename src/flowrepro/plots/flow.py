"""Seaborn figures of a flow experiment: W2 against NFE, samples, trajectories."""
from __future__ import annotations

import json

import numpy as np

from flowrepro import io


def save_figure(fig, out_png: str) -> None:
    for path in (out_png, out_png.removesuffix(".png") + ".pdf"):
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.rsplit(".", 1)[1], dpi=120, bbox_inches="tight")


def w2_vs_nfe(table, out_png: str) -> None:
    """W2 (mean and seed band) against counted NFE, one line per method and sampler, log-log."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = table[(table["metric"] == "w2") & (table["method"] != "data")].copy()
    rows["run"] = rows["method"] + " / " + rows["sampler"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sns.lineplot(data=rows, x="nfe", y="value", hue="run", style="dataset", marker="o", errorbar="sd", ax=ax)
    floor = table[(table["metric"] == "w2") & (table["method"] == "data")]["value"]
    if len(floor):
        ax.axhline(floor.mean(), color="grey", ls=":", label="data vs data (floor)")
    ax.set(xscale="log", yscale="log", xlabel="NFE (counted)", ylabel="exact W2 to test set")
    ax.legend(fontsize=7)
    save_figure(fig, out_png)
    plt.close(fig)


def samples(sample_files: list[str], data_file: str, out_png: str) -> None:
    """Seed-0 samples of each model at the fewest and most Euler steps, beside the data."""
    import matplotlib.pyplot as plt

    loaded = [io.load_npz(p) for p in sample_files]
    test = io.load_npz(data_file)["test"]
    fig, axes = plt.subplots(1, 1 + 2 * len(loaded), figsize=(2.6 * (1 + 2 * len(loaded)), 2.6), sharex=True, sharey=True)
    axes[0].scatter(test[:1000, 0], test[:1000, 1], s=1, c="k")
    axes[0].set_title("data")
    column = 1
    for arrays in loaded:
        index = json.loads(str(arrays["runs"]))
        euler = [r for r in index["runs"] if r["sampler"] == "euler" and r["seed"] == min(x["seed"] for x in index["runs"])]
        for run in (min(euler, key=lambda r: r["nfe"]), max(euler, key=lambda r: r["nfe"])):
            x = arrays[run["key"]]
            axes[column].scatter(x[:, 0], x[:, 1], s=1)
            axes[column].set_title(f"{index['model']}, Euler NFE={run['nfe']}", fontsize=9)
            column += 1
    save_figure(fig, out_png)
    plt.close(fig)


def trajectories(sample_files: list[str], out_png: str, n_paths: int = 60) -> None:
    """Fine Euler ODE paths from noise (dots) to samples (crosses): straight paths mean few steps suffice."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sample_files), figsize=(3.2 * len(sample_files), 3.2), squeeze=False, sharex=True, sharey=True)
    for ax, path in zip(axes[0], sample_files):
        arrays = io.load_npz(path)
        index = json.loads(str(arrays["runs"]))
        seed = min(r["seed"] for r in index["runs"])
        paths = arrays[f"trajectory/seed{seed}"][:, :n_paths]
        ax.plot(paths[:, :, 0], paths[:, :, 1], lw=0.6, alpha=0.7, color="tab:blue")
        ax.scatter(paths[0, :, 0], paths[0, :, 1], s=4, c="k")
        ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=8, c="tab:red", marker="x")
        ax.set_title(index["model"])
    save_figure(fig, out_png)
    plt.close(fig)

"""Seaborn figures of a flow experiment: W2 against NFE, samples, trajectories."""
from __future__ import annotations

import json

import numpy as np

from flowrepro import io


def save_figure(fig, out_png: str) -> None:
    """Write ``out_png`` and a vector ``.pdf`` beside it, both cropped to the figure's tight box.

    The box is measured once (one draw) and handed to both saves: ``bbox_inches="tight"`` would
    measure it again for each file (a quarter of the saving time, measured on a 6-panel figure).
    """
    import matplotlib

    box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(matplotlib.rcParams["savefig.pad_inches"])
    for path in (out_png, out_png.removesuffix(".png") + ".pdf"):
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.rsplit(".", 1)[1], dpi=120, bbox_inches=box)


#: y-axis label of each metric quality_vs_nfe can draw.
METRIC_LABELS = {"fid_classifier": "classifier FID to test set", "w2": "exact W2 to test set",
                 "solver_error": "mean distance to the fine ODE solve"}


def quality_vs_nfe(table, out_png: str, metric: str | None = None) -> None:
    """Quality (mean and seed band) against counted NFE, one line per method and sampler, log-log.

    One panel per dataset with rows of ``metric``; by default exact W2 for 2-D data and the
    classifier FID for images.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    datasets = [d for d in dict.fromkeys(table["dataset"]) if metric is None or (table[table["dataset"] == d]["metric"] == metric).any()]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        part = table[table["dataset"] == dataset]
        shown = metric or ("fid_classifier" if (part["metric"] == "fid_classifier").any() else "w2")
        rows = part[(part["metric"] == shown) & ~part["method"].isin(["data", "noise"])].copy()
        rows["run"] = rows["method"] + " / " + rows["sampler"]
        sns.lineplot(data=rows, x="nfe", y="value", hue="run", marker="o", errorbar="sd", ax=ax)
        floor = part[(part["metric"] == shown) & (part["method"] == "data")]["value"]
        if len(floor):
            ax.axhline(floor.mean(), color="grey", ls=":", label="data vs data (floor)")
        ax.set(xscale="log", yscale="log", xlabel="NFE (counted)", ylabel=METRIC_LABELS[shown], title=dataset)
        ax.legend(fontsize=7)
    save_figure(fig, out_png)
    plt.close(fig)


def _sample_runs(arrays) -> list[dict]:
    """Seed-0 runs of the Euler sampler at its fewest and most steps (else the first sampler's); none for a
    model no sampling entry runs (its file holds only its trajectories)."""
    index = json.loads(str(arrays["runs"]))
    if not index["runs"]:
        return []
    seed = min(r["seed"] for r in index["runs"])
    runs = [r for r in index["runs"] if r["seed"] == seed]
    euler = [r for r in runs if r["sampler"] == "euler"] or [r for r in runs if r["sampler"] == runs[0]["sampler"]]
    return [min(euler, key=lambda r: r["nfe"]), max(euler, key=lambda r: r["nfe"])]


def samples(sample_files: list[str], data_file: str, out_png: str, n_images: int = 16) -> None:
    """Seed-0 samples of each model at the fewest and most Euler steps, beside the data.

    2-D data as scatter plots; images as a grid, one row per (model, NFE), the data first.
    """
    import contextlib

    import matplotlib.pyplot as plt

    with contextlib.ExitStack() as stack:  # sample files opened lazily: only the plotted runs are read
        loaded = [stack.enter_context(io.open_npz(p)) for p in sample_files]
        _samples(loaded, io.load_data(data_file)["test"], out_png, n_images, plt)


def _samples(loaded: list, test: np.ndarray, out_png: str, n_images: int, plt) -> None:
    if test.ndim == 4:
        rows = [("data", test[:n_images])]
        for arrays in loaded:
            model = json.loads(str(arrays["runs"]))["model"]
            rows += [(f"{model}, {r['sampler']} NFE={r['nfe']}", arrays[r["key"]][:n_images]) for r in _sample_runs(arrays)]
        fig, axes = plt.subplots(len(rows), 1, figsize=(n_images * 0.6, 0.8 * len(rows)), squeeze=False)
        for ax, (title, images) in zip(axes[:, 0], rows):
            strip = np.concatenate([np.pad(image.mean(0), 1, constant_values=-1) for image in images], axis=1)
            ax.imshow(strip, cmap="gray", vmin=-1, vmax=1)
            ax.set_axis_off()
            ax.set_title(title, fontsize=7, loc="left")
        save_figure(fig, out_png)
        plt.close(fig)
        return
    panels = [(json.loads(str(arrays["runs"]))["model"], arrays, run) for arrays in loaded for run in _sample_runs(arrays)]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(2.6 * (1 + len(panels)), 2.6), sharex=True, sharey=True,
                             squeeze=False)
    axes[0, 0].scatter(test[:1000, 0], test[:1000, 1], s=1, c="k")
    axes[0, 0].set_title("data")
    for ax, (model, arrays, run) in zip(axes[0, 1:], panels):
        x = arrays[run["key"]]
        ax.scatter(x[:, 0], x[:, 1], s=1)
        ax.set_title(f"{model}, {run['sampler']} NFE={run['nfe']}", fontsize=9)
    save_figure(fig, out_png)
    plt.close(fig)


def trajectories(sample_files: list[str], out_png: str, n_paths: int = 60) -> None:
    """Fine Euler ODE paths from noise (dots) to samples (crosses): straight paths mean few steps suffice."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sample_files), figsize=(3.2 * len(sample_files), 3.2), squeeze=False, sharex=True, sharey=True)
    for ax, path in zip(axes[0], sample_files):
        with io.open_npz(path) as arrays:
            index = json.loads(str(arrays["runs"]))
            keys = sorted((int(k.removeprefix("trajectory/seed")), k) for k in arrays.files if k.startswith("trajectory/seed"))
            paths = arrays[keys[0][1]][:, :n_paths] if keys else None  # the first seed's (a model may have no runs)
        if paths is None:  # no velocity field (PFGM++ denoiser, CAF): no Euler trajectory was written
            ax.set_title(f"{index['model']} (no v(x, t))")
            continue
        ax.plot(paths[:, :, 0], paths[:, :, 1], lw=0.6, alpha=0.7, color="tab:blue")
        ax.scatter(paths[0, :, 0], paths[0, :, 1], s=4, c="k")
        ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=8, c="tab:red", marker="x")
        ax.set_title(index["model"])
    save_figure(fig, out_png)
    plt.close(fig)

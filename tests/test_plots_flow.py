"""The sample figure: one panel (or image row) per plotted run, none for a model that no sampling entry runs."""
import json

import numpy as np
import pytest

from flowrepro.plots import flow


def _sample_file(model: str, shape: tuple[int, ...], nfes: list[int]) -> dict:
    runs = [{"key": f"euler/uniform/steps={n}/seed0", "sampler": "euler", "nfe": n, "seed": 0} for n in nfes]
    arrays = {r["key"]: np.random.default_rng(n).normal(size=(20, *shape)) for r, n in zip(runs, nfes)}
    return arrays | {"runs": np.array(json.dumps({"model": model, "dataset": "d", "runs": runs}))}


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_a_model_without_runs_gets_no_panel(tmp_path, shape) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = [_sample_file("rf2", shape, [1, 4]), _sample_file("rf1", shape, [])]
    assert flow._sample_runs(loaded[1]) == []
    assert [r["nfe"] for r in flow._sample_runs(loaded[0])] == [1, 4]
    out = tmp_path / "samples.png"
    test = np.random.default_rng(0).normal(size=(50, *shape))
    flow._samples(loaded, test, str(out), 4, plt)
    assert out.stat().st_size > 0


def test_trajectories_of_a_model_without_runs(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from flowrepro import io

    files = []
    for model, nfes in (("rf2", [1]), ("rf1", [])):
        arrays = _sample_file(model, (2,), nfes)
        arrays |= {f"trajectory/seed{s}": np.random.default_rng(s).normal(size=(11, 30, 2)) for s in (1, 0)}
        files.append(str(tmp_path / f"{model}.npz"))
        io.save_npz(files[-1], **arrays)
    out = tmp_path / "paths.png"
    flow.trajectories(files, str(out))
    assert out.stat().st_size > 0

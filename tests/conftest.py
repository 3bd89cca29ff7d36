import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ["Snakefile", "config", "workflow"]


def copy_workflow(target: Path) -> Path:
    """Copy what `snakemake` needs (the package itself is installed) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, target / part)
        else:
            shutil.copy2(source, target / part)
    return target


@pytest.fixture
def workflow_copy(tmp_path):
    return copy_workflow(tmp_path / "wf")


def shrink_scale(scale: dict, flow2d_steps: int = 60) -> dict:
    """Shrink a tiny scale further for tests: one seed, seconds per job, same code paths."""
    scale["seeds"] = [0]
    scale["flow2d"].update(n_train=2000, n_test=500, width=32, depth=2, steps=flow2d_steps, batch_size=64,
                           checkpoint_every=20, reflow_pairs=500, pair_steps=5, n_eval=200, trajectory_steps=10)
    scale["flow_images"].update(network="unet_smoke", steps=20, batch_size=16, checkpoint_every=10, reflow_pairs=100,
                                pair_steps=2, n_eval=100, trajectory_steps=4)
    return scale


@pytest.fixture
def tiny_scale(tmp_path):
    """A scale file small enough for unit tests (seconds)."""
    import yaml

    scale = shrink_scale(yaml.safe_load((REPO / "config/scales/tiny.yaml").read_text()))
    path = tmp_path / "scale.yaml"
    path.write_text(yaml.safe_dump(scale))
    return path


@pytest.fixture(autouse=True)
def _threads():
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of many tiny ops (faster, and deterministic), restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def registries_restored():
    """Registries as they were after the test: loading examples or edited plugin copies registers their pieces
    (caf, ab3), and later tests must see the built-ins only."""
    import importlib
    import sys

    from flowrepro import registry
    from flowrepro.stages.listing import BUILTIN_MODULES

    for module in BUILTIN_MODULES:  # built-ins register once per process: before the snapshot
        importlib.import_module(module)
    tables = [t for t in vars(registry).values() if isinstance(t, registry.Registry)]
    saved = [(dict(t._items), dict(t._sources)) for t in tables]
    modules = set(sys.modules)
    yield
    for table, (items, sources) in zip(tables, saved):
        table._items, table._sources = items, sources
    for name in set(sys.modules) - modules:  # a plugin module loads (and registers) again next time
        if name.startswith("flowrepro_plugin_"):
            del sys.modules[name]


@pytest.fixture
def server(tmp_path):
    """(directory, base URL) of a local HTTP server over an empty tmp directory: what downloads are tested against."""
    from fake_archives import serve_directory

    root = tmp_path / "www"
    root.mkdir()
    with serve_directory(root) as url:
        yield root, url

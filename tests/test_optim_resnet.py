"""ResNet-20 / CIFAR-10 (paper scale only): the model, a few steps on random CIFAR-shaped tensors,
and the dry run of the paper-scale configuration. No data is read or downloaded; torchvision is
never imported."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from flowrepro.optim.registry import get_optimizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resnet20_structure():
    import torch
    import torch.nn as nn

    from flowrepro.optim.resnet import resnet20

    for shortcut, n_params in (("conv", 272_474), ("pad", 269_722)):  # option B (ADAHESSIAN code), option A (He et al.)
        model = resnet20(shortcut=shortcut)
        assert sum(p.numel() for p in model.parameters()) == n_params
        convs3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert len(convs3) + 1 == 20  # 19 3x3 convs + the linear layer: 20 weighted layers
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError):
        resnet20(shortcut="other")
    assert "torchvision" not in sys.modules


@pytest.mark.parametrize("name, lr", [("adam", 1e-3), ("sgd", 0.05)])
def test_resnet20_loss_falls_on_random_cifar_batch(name, lr):
    """A few steps of two optimizers on one batch of 16 random 3x32x32 images, 10 classes."""
    import torch

    from flowrepro.optim.runner import _make_problem

    torch.manual_seed(0)
    problem = _make_problem("cifar10_resnet20", 0, {"synthetic": 20, "batch_size": 16, "augment": False,
                                                    "weight_decay": 0.0})
    assert problem.info["synthetic"] and problem.info["n_train"] == 16 and problem.info["steps_per_epoch"] == 1
    spec = get_optimizer(name)
    opt = spec.build(problem.params, lr)
    losses = []
    for t in range(1, 7):  # the same 16 images every step (one batch per epoch), in a new order
        opt.zero_grad(set_to_none=True)
        loss = problem.loss(t)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(lambda v: v == v, losses))
    assert losses[-1] < 0.7 * losses[0], losses
    metrics = problem.summary()
    assert {"val_accuracy", "test_accuracy", "val_loss", "test_loss"} <= set(metrics)


def test_resnet20_lr_schedule_and_augmentation():
    import torch

    from flowrepro.optim.problems_cifar import _augment
    from flowrepro.optim.runner import _make_problem

    problem = _make_problem("cifar10_resnet20", 0, {"synthetic": 50, "batch_size": 10, "lr_decay_epochs": [2, 3]})
    per_epoch = problem.info["steps_per_epoch"]  # 40 training images (a fifth is validation) / 10
    assert per_epoch == 4
    assert [problem.lr_factor(t) for t in (1, 2 * per_epoch, 2 * per_epoch + 1, 3 * per_epoch + 1)] == \
        pytest.approx([1.0, 1.0, 0.1, 0.01])
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    crops = _augment(x, torch.Generator().manual_seed(0))
    assert crops.shape == x.shape
    for crop, image in zip(crops, x):  # each crop is a shifted (maybe mirrored) window of its image
        inside = crop[crop != 0]
        assert len(inside) and set(inside.tolist()) <= set(image.flatten().tolist())


def test_paper_scale_config_dry_run(capsys):
    """The paper-scale optimizer_zoo parses; ResNet-20 / CIFAR-10 is planned and builds (synthetic
    tensors in place of the absent archive); at tiny scale it is not planned at all."""
    from flowrepro.config import load_experiment, load_scale
    from flowrepro.optim import experiment as optim_experiment

    exp = load_experiment(REPO / "config/experiments/optimizer_zoo.yaml")
    paper = load_scale(REPO / "config/scales/paper.yaml")
    settings = {"scale": paper["scale"], "seeds": paper["seeds"], **paper.get("optimizers", {})}
    entries = {p["name"]: p for p in optim_experiment._problem_entries(exp, settings)}
    cifar = entries["cifar10_resnet20"]
    assert cifar["steps"] == 28_000 and cifar["kwargs"]["batch_size"] == 256  # 160 epochs of 175 steps
    assert cifar["kwargs"]["data"] == "data/cifar10.npz"
    assert optim_experiment.data_files(exp, settings) == ["data/cifar10.npz"]

    cheap = {**settings, "problem_kwargs": {"cifar10_resnet20": {
        **settings["problem_kwargs"]["cifar10_resnet20"], "data": "/nonexistent/cifar10.npz", "batch_size": 8}}}
    only_cifar = {**exp, "problems": [p for p in exp["problems"] if isinstance(p, dict) and p["name"] == "cifar10_resnet20"]}
    (row,) = optim_experiment.dry_run(only_cifar, cheap)
    assert row["problem"] == "cifar10_resnet20" and row["n_params"] == 272_474
    assert row["data"].startswith("synthetic") and row["loss"] > 0
    assert row["runs"] == sum(len(o["lr_grid"]) for o in optim_experiment._optimizer_entries(exp)) * len(paper["seeds"])
    assert "torchvision" not in sys.modules

    tiny = load_scale(REPO / "config/scales/tiny.yaml")
    tiny_settings = {"scale": tiny["scale"], "seeds": tiny["seeds"], **tiny.get("optimizers", {})}
    assert "cifar10_resnet20" not in {p["name"] for p in optim_experiment._problem_entries(exp, tiny_settings)}
    assert optim_experiment.data_files(exp, tiny_settings) == []


def test_dry_run_rejects_a_target_metric_that_is_never_logged():
    from flowrepro.optim import experiment as optim_experiment

    exp = {"id": "x", "kind": "optimizer", "optimizers": ["adam"], "lr_grid": [0.01],
           "problems": [{"name": "rosenbrock", "steps": 5, "target": {"metric": "val_accuracy", "mode": "max",
                                                                    "reference": ["adam"]}}]}
    with pytest.raises(ValueError, match="not logged"):
        optim_experiment.dry_run(exp, {"scale": "tiny", "seeds": [0]})
    exp["problems"][0]["target"] = {"metric": "loss", "reference": ["adamw"]}
    with pytest.raises(ValueError, match="reference"):
        optim_experiment.dry_run(exp, {"scale": "tiny", "seeds": [0]})

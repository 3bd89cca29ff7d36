"""Class conditioning and classifier-free guidance (flowrepro.generative.conditioning): the guided field
is u_null + w (u_y - u_null) from one network call, w = 0 / 1 are the unconditional / conditional
models, guidance commutes with the velocity -> eps conversion samplers use, training batches carry
their own labels with the asked-for dropout, the stages train and sample a conditional digits model
(classes by row across batches, class_accuracy read by evaluate), and config errors name the key."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import REPO
from flowrepro.generative.conditioning import (ClassConditional, class_labels, conditional_network, guided, labelled,
                                               labelled_independent)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LabelledLinear(nn.Module):
    """f(x, t, y) = x * (1 + t) + c_y: a different, known output per label; counts its calls."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.offsets = torch.arange(classes + 1, dtype=torch.float32) * 10.0
        self.calls = 0

    def forward(self, x, t, labels):
        self.calls += 1
        return x * (1 + t.reshape(-1, 1)) + self.offsets[labels].reshape(-1, 1)


def test_guided_field_is_the_cfg_combination_in_one_call():
    inner = LabelledLinear(3)
    net = ClassConditional(inner, 3)
    x, t = torch.randn(5, 2), torch.full((5,), 0.3)
    unconditional = inner(x, t, torch.full((5,), 3))
    conditional = inner(x, t, (torch.arange(5) + 4) % 3)  # rows 4..8 of the run
    inner.calls = 0
    with guided(net, 2.5, first_row=4):
        out = net(x, t)
    assert inner.calls == 1  # [x; x] with [y; null]: one network evaluation, one NFE
    torch.testing.assert_close(out, unconditional + 2.5 * (conditional - unconditional))
    with guided(net, 0.0):
        torch.testing.assert_close(net(x, t), unconditional)
    with guided(net, 1.0, first_row=4):
        torch.testing.assert_close(net(x, t), conditional)
    torch.testing.assert_close(net(x, t), unconditional)  # outside: the null class again
    assert net.guidance is None and net.first_row == 0


def test_guidance_commutes_with_the_velocity_to_eps_conversion():
    """EpsilonAtLevel-style samplers call model.epsilon: the guided eps is eps_null + w (eps_y - eps_null)."""
    from flowrepro.generative.parameterization import VelocityModel
    from flowrepro.generative.paths import build_path

    inner = LabelledLinear(2)
    model = VelocityModel(ClassConditional(inner, 2), build_path({"path": "linear"}))
    x, t = torch.randn(4, 2), torch.full((4,), 0.6)
    with guided(model, 0.0):
        eps_null = model.epsilon(x, t)
    with guided(model, 1.0):
        eps_y = model.epsilon(x, t)
    with guided(model, 4.0):
        torch.testing.assert_close(model.epsilon(x, t), eps_null + 4.0 * (eps_y - eps_null))
    assert conditional_network(model) is model.network


def test_guidance_of_an_unconditional_model_and_labels_of_the_wrong_size_are_refused():
    with pytest.raises(TypeError, match="not class-conditional"), guided(nn.Linear(2, 2), 2.0):
        pass
    net = ClassConditional(LabelledLinear(2), 2)
    with labelled(net, torch.zeros(3, dtype=torch.long)), pytest.raises(ValueError, match="3 labels for a batch of 4"):
        net(torch.zeros(4, 2), torch.zeros(4))


def test_labelled_batches_keep_each_points_label_and_drop_at_the_asked_rate():
    data = torch.arange(50, dtype=torch.float32).reshape(50, 1)
    labels = torch.arange(50) % 5
    generator = torch.Generator().manual_seed(0)
    x0, x1, y = labelled_independent(data, labels, 20_000, generator, classes=5, label_dropout=0.2)
    kept = y != 5
    assert torch.equal(y[kept], x1[kept, 0].long() % 5)  # the label of the drawn point
    n, p = 20_000, 0.2
    assert abs((~kept).float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert x0.shape == x1.shape and abs(x0.std().item() - 1) < 0.05
    assert torch.equal(class_labels(4, 3, first_row=5), torch.tensor([2, 0, 1, 2]))


def test_a_conditional_vector_model_and_guidance_without_condition_are_config_errors(tmp_path):
    from flowrepro.config import ConfigError, load_experiment
    from flowrepro.stages.train import build_model

    with pytest.raises(ValueError, match="condition: needs an image model"):
        build_model((2,), {"width": 8, "depth": 2}, {"condition": {"classes": 2, "label_dropout": 0.1}})
    spec = yaml.safe_load((REPO / "config/experiments/guided_flows.yaml").read_text())
    spec["models"]["plain"] = {"path": "linear"}
    spec["sampling"]["euler_w2"].pop("models")
    spec.pop("recipes_from")
    path = tmp_path / "guided_flows.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"sampling/euler_w2/guidance on models without condition: \['plain'\]"):
        load_experiment(path)
    spec["models"]["fm_cond"]["coupling"] = "minibatch_ot"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="models/fm_cond/condition: trains on independent pairs only, not coupling 'minibatch_ot'"):
        load_experiment(path)


def test_the_stages_train_sample_and_evaluate_a_guided_digits_model(tmp_path, tiny_scale):
    """A conditional digits model trains on the data file's labels; a guided run's batches carry their
    rows' classes (the stage's samples equal one guided solve of all rows); evaluate writes
    class_accuracy and divergence_rate for guided runs only, and solver_error only against the
    reference of the same guidance."""
    import pandas as pd

    from flowrepro.samplers import ode
    from flowrepro.stages import acquire, classifier, evaluate, sample, train

    data = tmp_path / "digits.npz"
    acquire.run("digits", str(data), n_train=0, n_test=0, seed=0, download_dir=None, mirror=None)
    scale = yaml.safe_load(tiny_scale.read_text())
    scale["flow_images"].update(n_eval=30, sample_batch=8)  # 4 batches: classes must continue across them
    tiny_scale.write_text(yaml.safe_dump(scale))
    spec = yaml.safe_load((REPO / "config/experiments/guided_flows.yaml").read_text())
    spec.update(models={"fm_cond": spec["models"]["fm_cond"]}, reference={"sampler": "euler", "steps": 4, "guidance": 2.0},
                sampling={"euler_w2": {"sampler": "euler", "guidance": 2.0, "nfe": [4]}, "euler_w1": {"sampler": "euler", "guidance": 1.0, "nfe": [4]},
                          "euler": {"nfe": [4]}}, claims=[])
    spec.pop("recipes_from")
    experiment = tmp_path / "guided_flows.yaml"
    experiment.write_text(yaml.safe_dump(spec))
    model_file = tmp_path / "fm_cond.pt"
    train.run_from_experiment(str(experiment), str(tiny_scale), "digits", "fm_cond", str(data), str(model_file), progress=False)
    info, models = train.load_models(str(model_file))
    assert isinstance(conditional_network(models[0]), ClassConditional)
    out = tmp_path / "samples.npz"
    sample.run(str(experiment), str(tiny_scale), str(model_file), str(out), method="fm_cond")
    stored = np.load(out)
    index = json.loads(str(stored["runs"]))
    runs = {r["sampler"]: r for r in index["runs"]}
    assert runs["euler_w2"]["guidance"] == 2.0 and runs["euler_w2"]["classes"] == 10 and "guidance" not in runs["euler"]
    assert runs["euler_w2"]["nfe"] == 4 and index["reference_guidance"] == 2.0
    x0 = sample._noise(30, tuple(info["shape"]), 0, "cpu")
    with torch.no_grad(), guided(models[0], 2.0):  # all 30 rows in one batch: row i is class i mod 10
        whole = ode.integrate_fixed(models[0], x0, np.linspace(0, 1, 5), "euler")
    np.testing.assert_allclose(stored[runs["euler_w2"]["key"]], whole.numpy(), atol=1e-5)
    np.testing.assert_allclose(stored["reference/seed0"], whole.numpy(), atol=1e-5)  # the guided reference

    classifier_file = tmp_path / "digits.pt"
    classifier.run(str(data), str(classifier_file), seed=0, steps=20)
    metrics = tmp_path / "metrics.csv"
    evaluate.run(str(experiment), str(tiny_scale), [str(data)], [str(out)], str(metrics), classifier_files=[str(classifier_file)])
    rows = pd.read_csv(metrics)
    rows = rows[(rows.method == "fm_cond") & (rows.seed == 0)]
    by_sampler = rows.groupby("sampler").metric.apply(set)
    assert {"class_accuracy", "divergence_rate", "solver_error"} <= by_sampler["euler_w2"]
    assert "class_accuracy" in by_sampler["euler_w1"] and "solver_error" not in by_sampler["euler_w1"]
    assert not {"class_accuracy", "solver_error"} & by_sampler["euler"]
    solver_error = rows[(rows.sampler == "euler_w2") & (rows.metric == "solver_error")].value.item()
    assert solver_error < 1e-4  # the same solve as the reference


def test_class_accuracy_compares_each_samples_prediction_with_row_mod_k(tmp_path):
    from flowrepro.metrics.conditional import class_accuracy
    from flowrepro.models.classifier import build_classifier, load_classifier, save_classifier

    torch.manual_seed(0)
    save_classifier(tmp_path / "c.pt", build_classifier(1, (8, 8), 10))
    model, _ = load_classifier(tmp_path / "c.pt")
    samples = np.random.default_rng(0).standard_normal((23, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        predicted = model(torch.as_tensor(samples)).argmax(1).numpy()
    expected = float(np.mean(predicted == np.arange(23) % 10))
    assert class_accuracy(samples, str(tmp_path / "c.pt"), 10, batch_size=5) == pytest.approx(expected)

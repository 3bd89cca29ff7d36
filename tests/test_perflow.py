"""PeRFlow's objective pinned to its definition: windows, the teacher's window solve, K = 1 = reflow."""
import pytest
import torch

from flowrepro.generative import losses
from flowrepro.generative.objectives import build_objective
from flowrepro.generative.parameterization import VelocityModel
from flowrepro.generative.paths import LinearPath
from flowrepro.generative.perflow import solve_window, window_bounds
from flowrepro.samplers import ode


class _Teacher(VelocityModel):
    """A nonlinear velocity field v(x, t) = sin(x) (1 + t), counting its calls."""

    def __init__(self):
        super().__init__(lambda x, t: torch.sin(x) * (1 + t[:, None]), LinearPath())
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        return super().__call__(x, t)


def test_windows_tile_the_unit_interval():
    t = torch.tensor([0.0, 0.1, 0.25, 0.2499, 0.5, 0.99, 1.0])
    start, end = window_bounds(t, 4)
    assert start.tolist() == [0.0, 0.0, 0.25, 0.0, 0.5, 0.75, 0.75]
    assert end.tolist() == [0.25, 0.25, 0.5, 0.25, 0.75, 1.0, 1.0]


def test_window_solve_is_euler_on_the_teachers_ode_per_sample():
    teacher, x = _Teacher(), torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    start, end = torch.full((5,), 0.25), torch.full((5,), 0.5)
    expected = ode.integrate_fixed(teacher, x, torch.linspace(0.25, 0.5, 4).tolist(), "euler")
    torch.testing.assert_close(solve_window(teacher, x, start, end, 3), expected)


def test_one_window_is_reflow_on_the_teachers_pairs():
    """K = 1: the window is [0, 1], x_{t_s} = x0, so the loss is regression on (x0, Euler_teacher(x0))."""
    teacher, generator = _Teacher(), torch.Generator().manual_seed(1)
    x0, x1, t = torch.randn(64, 2, generator=generator), torch.randn(64, 2, generator=generator), torch.rand(64, generator=generator)
    student = lambda x, s: 0.3 * x - s[:, None]  # noqa: E731
    perflow = build_objective({"objective": {"name": "perflow", "windows": 1, "solving_steps": 6}}, LinearPath(), losses.mse,
                              teacher)
    pairs_end = ode.integrate_fixed(teacher, x0, torch.linspace(0, 1, 7).tolist(), "euler")
    reflow = build_objective({}, LinearPath(), losses.mse)
    assert float(perflow(student, x0, x1, t)) == pytest.approx(float(reflow(student, x0, pairs_end, t)), rel=1e-6)


def test_window_start_is_the_teachers_marginal_and_the_target_its_chord():
    """K = 4, one teacher step a window: the target is v_teacher(x_{t_s}, t_s) at x_{t_s} = (1 - t_s) x0 + t_s x1."""
    teacher, generator = _Teacher(), torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(32, 2, generator=generator), torch.randn(32, 2, generator=generator)
    t = torch.full((32,), 0.6)  # window [0.5, 0.75)
    seen = {}

    def student(x, s):
        seen["x"], seen["t"] = x, s
        return torch.zeros_like(x)

    perflow = build_objective({"objective": {"name": "perflow", "windows": 4, "solving_steps": 1}}, LinearPath(),
                              losses.mse, teacher)
    loss = perflow(student, x0, x1, t)
    x_start = 0.5 * x0 + 0.5 * x1
    target = teacher(x_start, torch.full((32,), 0.5))
    torch.testing.assert_close(seen["x"], x_start + 0.1 * target)
    torch.testing.assert_close(float(loss), float((target ** 2).sum(1).mean()))


def test_teacher_calls_per_step_and_a_missing_teacher():
    teacher = _Teacher()
    perflow = build_objective({"objective": {"name": "perflow", "solving_steps": 8}}, LinearPath(), losses.mse, teacher)
    perflow(lambda x, s: x, torch.randn(8, 2), torch.randn(8, 2), torch.rand(8))
    assert teacher.calls == 8  # one batched call per solver step, all windows at once
    with pytest.raises(ValueError, match="teacher"):
        build_objective({"objective": "perflow"}, LinearPath(), losses.mse)


def test_the_train_stage_hands_each_seed_its_teachers_model(tmp_path, tiny_scale, one_torch_thread):
    """perflow's train job reads the teacher file; without --teacher it is refused; its student trains
    from the teacher's weights (init) and the teacher's key is part of the student's."""
    from conftest import REPO

    from flowrepro.config import load_experiment, load_scale, model_identity, model_key
    from flowrepro.stages import acquire, train

    experiment_file = str(REPO / "config/experiments/perflow.yaml")
    data = tmp_path / "moons.npz"
    acquire.run("moons", str(data), n_train=2000, n_test=500, seed=0, download_dir=None, mirror=None)
    teacher_file = tmp_path / "rf1.pt"
    train.run_from_experiment(experiment_file, str(tiny_scale), "moons", "rf1", str(data), str(teacher_file), progress=False)
    description = train.describe(experiment_file, "perflow", "moons", load_scale(tiny_scale))
    with pytest.raises(ValueError, match="teacher"):
        train.run(description, str(tiny_scale), str(data), str(tmp_path / "no_teacher.pt"), init_files=str(teacher_file),
                  progress=False)
    out = tmp_path / "perflow.pt"
    train.run(description, str(tiny_scale), str(data), str(out), init_files=str(teacher_file), teacher_files=[str(teacher_file)],
              progress=False)
    info, models = train.load_models(str(out))
    assert set(models) == set(load_scale(tiny_scale)["seeds"]) and all(len(s["losses"]) == info["steps"] for s in info["seeds"].values())
    experiment = load_experiment(experiment_file)
    assert model_identity(experiment, "perflow", "moons")["spec"]["teacher"] == model_key(experiment, "rf1", "moons")


def test_config_names_a_bad_objective_option_and_an_unknown_teacher(tmp_path):
    import yaml
    from conftest import REPO

    from flowrepro.config import ConfigError, load_experiment

    spec = yaml.safe_load((REPO / "config/experiments/perflow.yaml").read_text())
    spec.pop("recipes_from")
    spec["models"]["perflow"]["objective"]["window"] = 4
    path = tmp_path / "perflow.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"models/perflow/objective.*no option\(s\) \['window'\]"):
        load_experiment(path)
    spec["models"]["perflow"]["objective"].pop("window")
    spec["models"]["perflow"]["teacher"] = "rf9"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="models/perflow/teacher names unknown model 'rf9'"):
        load_experiment(path)


def test_window_time_squeezes_each_window_and_keeps_its_start():
    from flowrepro.generative.perflow import window_time

    t = torch.tensor([0.0, 0.125, 0.2499, 0.25, 0.5, 0.875, 1.0])
    expected = torch.tensor([0.0, 0.0625, 0.12495, 0.25, 0.5, 0.8125, 0.875])
    torch.testing.assert_close(window_time(t, 4, 0.5), expected)
    assert float(window_time(torch.tensor([0.25 - 1e-9]), 4, 0.5)) == pytest.approx(0.25)  # a grid point in rounding


def test_the_student_network_reads_window_time_and_loads_the_teachers_weights():
    from flowrepro.stages.train import build_model, build_network

    settings = {"width": 16, "depth": 2}
    spec = {"objective": {"name": "perflow", "windows": 4, "gap": 0.5}}
    torch.manual_seed(0)
    plain = build_network((2,), settings)
    student = build_model((2,), settings, spec)
    student.load_state_dict(plain.state_dict())  # same keys: --init from the teacher works
    x, t = torch.randn(7, 2), torch.tensor([0.0, 0.1, 0.3, 0.5, 0.6, 0.9, 1.0])
    from flowrepro.generative.perflow import window_time

    torch.testing.assert_close(student(x, t), plain(x, window_time(t, 4, 0.5)))
    no_gap = build_model((2,), settings, {"objective": {"name": "perflow", "gap": 0.0}})
    no_gap.load_state_dict(plain.state_dict())
    torch.testing.assert_close(no_gap(x, t), plain(x, t))

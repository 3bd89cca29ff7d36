"""DPM-Solver-v3 on networks: ems_network against the closed-form EMS, forward-mode JVPs through a
diffusers UNet against finite differences, the cached EMS file (checksum, model identity), and the
ems -> sample stages (the sample job reads the EMS, never recomputes it)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from flowrepro import io
from flowrepro.data.gmm import mixture
from flowrepro.samplers.diffusion import ExactMixture
from flowrepro.samplers.model_statistics import alpha_sigma, ems_exact, ems_grid, ems_network

from conftest import REPO


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _draws(exact, n, seed):
    """The calibration draws (x0, z) ems_exact takes from ``seed``."""
    gen = np.random.default_rng(seed)
    x0 = exact.gmm.sample(n, gen)
    return torch.as_tensor(x0, dtype=torch.float64), torch.as_tensor(gen.standard_normal(x0.shape))


def _mixture_eps(exact):
    def eps(x, lam):
        alpha, sigma = alpha_sigma(lam)
        return exact.noise_mean(x, alpha, sigma)
    return eps


def test_ems_network_with_exact_diagonal_equals_ems_exact():
    """Same draws, the diagonal by d JVPs: the moment-based (s, b) equal ems_exact's centred ones to rounding."""
    exact = ExactMixture(mixture("gmm2d"))
    lambdas = ems_grid(15)
    x0, z = _draws(exact, 128, seed=3)
    ours = ems_network(_mixture_eps(exact), lambdas, x0, z, diagonal="exact", batch=50)  # 3 batches: summed moments
    theirs = ems_exact(exact, lambdas, n_samples=128, seed=3)
    np.testing.assert_allclose(ours.l, theirs.l, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours.b, theirs.b, rtol=1e-7, atol=1e-9)
    # s = Cov(f, f') / Var f: at the lowest lambdas f = G - l u nearly cancels (Var f ~ 1e-7 of G's), so
    # l's last-bit difference (JVP columns vs closed form) moves s by ~1e-7 relative: rtol 1e-6
    np.testing.assert_allclose(ours.s, theirs.s, rtol=1e-6, atol=1e-9)
    assert ours.calls == len(lambdas) * (2 + 2)


def test_hutchinson_l_is_within_its_monte_carlo_error():
    """l by one Rademacher probe per draw minus the exact l on the same draws is
    mean_n sigma sum_{j != i} v_i v_j J_ij: zero mean, sd_i = sqrt(sum_n sum_{j != i} sigma^2 J_ij^2) / n
    (computed here from full Jacobians); every point within 5 sd (60 points: P(any > 5 sd) ~ 3e-5)."""
    exact = ExactMixture(mixture("gmm2d"))
    lambdas = ems_grid(30)
    x0, z = _draws(exact, 2048, seed=1)
    eps = _mixture_eps(exact)
    hutch = ems_network(eps, lambdas, x0, z, seed=7)
    truth = ems_exact(exact, lambdas, n_samples=2048, seed=1)
    assert hutch.calls == 2 * len(lambdas)
    for k, lam_value in enumerate(lambdas):
        lam = torch.tensor(lam_value, dtype=torch.float64)
        alpha, sigma = alpha_sigma(lam)
        x = alpha * x0 + sigma * z
        jac = torch.func.vmap(torch.func.jacrev(lambda y: eps(y[None], lam)[0]))(x)  # (n, d, d)
        off = jac * (1 - torch.eye(2, dtype=torch.float64))
        sd = (sigma**2 * (off**2).sum((0, 2))).sqrt().numpy() / len(x)
        assert np.all(np.abs(hutch.l[k] - truth.l[k]) < 5 * sd + 1e-12), (k, hutch.l[k], truth.l[k], sd)
    assert np.abs(hutch.l - truth.l).max() > 0  # it is an estimate, not the exact diagonal


def test_jvp_through_a_diffusers_unet_matches_finite_differences():
    """EpsilonOfLambda on the smoke UNet (float64, with its attention mid-block) under forward_ad_safe:
    the JVP in x and in lambda equal central differences of the plain forward (fused kernels, torch's
    GroupNorm). Tolerance: O(h^2) in x. In lambda the random UNet's sinusoidal time embedding (frequencies
    up to 1000 per unit t) needs Richardson's O(h^4) difference, and h cannot shrink much below the
    20001-point grid that t(lambda) interpolates (observed 1.2e-4 relative; bound 1e-3)."""
    from flowrepro.generative.parameterization import AsVelocity
    from flowrepro.generative.paths import VPPath
    from flowrepro.models.unet import build_unet
    from flowrepro.samplers.model_statistics import forward_jvp
    from flowrepro.samplers.trained_diffusion import EpsilonOfLambda, forward_ad_safe

    torch.manual_seed(0)
    net = build_unet((1, 8, 8), "unet_smoke").double().eval()
    eps = EpsilonOfLambda(AsVelocity(net, VPPath()))
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    v = torch.randn_like(x)
    lam = torch.tensor(0.4, dtype=torch.float64)
    with torch.no_grad():
        h = 1e-4
        fd_x = (eps(x + h * v, lam) - eps(x - h * v, lam)) / (2 * h)
        central = lambda h: (eps(x, lam + h) - eps(x, lam - h)) / (2 * h)  # noqa: E731
        fd_lam = (4 * central(2e-4) - central(4e-4)) / 3  # Richardson: O(h^4)
    with forward_ad_safe():
        value, jvp_x = forward_jvp(lambda y: eps(y, lam), (x,), (v,))
        _, jvp_lam = forward_jvp(lambda m: eps(x, m), (lam,), (torch.ones_like(lam),))
        func_value, func_jvp_x = torch.func.jvp(lambda y: eps(y, lam), (x,), (v,))
    scale = float(jvp_x.abs().max())  # forward_jvp is torch.func.jvp's result (to float64 rounding)
    assert float((value - func_value).abs().max()) < 1e-12 and float((jvp_x - func_jvp_x).abs().max()) < 1e-12 * scale
    assert float((value.detach() - eps(x, lam).detach()).abs().max()) < 1e-10  # the written-out GroupNorm: same values
    assert float((jvp_x - fd_x).abs().max()) < 1e-6 * float(fd_x.abs().max())
    assert float((jvp_lam - fd_lam).abs().max()) < 1e-3 * float(fd_lam.abs().max())
    assert float(fd_lam.abs().max()) > 1e-3  # the lambda direction is not trivially zero


def _ems_file(tmp_path):
    from flowrepro.stages import ems as ems_stage

    exact = ExactMixture(mixture("gmm2d"))
    ems = ems_exact(exact, ems_grid(20), n_samples=64, seed=0)
    model = tmp_path / "model.pt"
    model.write_bytes(b"a model")
    path = tmp_path / "vp_eps.safetensors"
    ems_stage.save(str(path), {("v3", 0): (ems, {"n_calibration": 64}, 0.1)}, {"model_sha256": ems_stage.files_digest(str(model))})
    return path, model, ems


def test_ems_file_round_trips_and_refuses_a_corrupted_file_or_another_model(tmp_path):
    from flowrepro.stages import ems as ems_stage

    path, model, ems = _ems_file(tmp_path)
    found, metadata = ems_stage.load(str(path), str(model))
    back = found[("v3", 0)]
    for name in ("lambdas", "l", "s", "b"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ems, name))
    assert back.calls == ems.calls and metadata["costs"]["v3/seed0"]["sample_calls"] == ems.calls * 64
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one byte of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(io.ChecksumMismatch, match="vp_eps.safetensors"):
        ems_stage.load(str(path))
    path, model, _ = _ems_file(tmp_path)
    model.write_bytes(b"another model")
    with pytest.raises(ValueError, match="EMS of another model"):
        ems_stage.load(str(path), str(model))


def test_sample_stage_uses_the_cached_ems(tmp_path, tiny_scale, monkeypatch):
    """flowrepro ems writes the statistics; sample reads them (network_ems is then made to fail) and runs
    v3 with one counted call per step; without the file it stops naming the missing EMS."""
    from flowrepro.samplers import trained_diffusion
    from flowrepro.stages import acquire, ems as ems_stage, sample, train

    data = tmp_path / "8gaussians.npz"
    acquire.run("8gaussians", str(data), n_train=2000, n_test=500, seed=0, download_dir=None, mirror=None)
    model = tmp_path / "vp_eps.pt"
    train.run_from_experiment(str(REPO / "config/experiments/time_shift_trained.yaml"), str(tiny_scale), "8gaussians", "vp_eps",
                              str(data), str(model), progress=False)
    spec = yaml.safe_load((REPO / "config/experiments/dpm_solver_v3_trained.yaml").read_text())
    spec.update(datasets=["8gaussians"], sampling={"v3": {"sampler": {"name": "dpm_solver_v3", "n_calibration": 64, "ems_lambdas": 20},
                                                           "nfe": [3, 5]}})
    experiment = tmp_path / "dpm_solver_v3_trained.yaml"
    experiment.write_text(yaml.safe_dump(spec))
    ems_file = tmp_path / "ems.safetensors"
    ems_stage.run(str(experiment), str(tiny_scale), str(model), str(data), str(ems_file), method="vp_eps")
    monkeypatch.setattr(trained_diffusion, "network_ems", lambda *a, **k: pytest.fail("EMS recomputed in sample"))
    out = tmp_path / "samples.npz"
    sample.run(str(experiment), str(tiny_scale), str(model), str(out), method="vp_eps", ems_file=str(ems_file))
    runs = json.loads(str(np.load(out)["runs"]))["runs"]
    v3 = [r for r in runs if r["sampler"] == "v3"]
    assert sorted(r["nfe"] for r in v3 if r["seed"] == v3[0]["seed"]) == [3, 5]
    assert all(r["calibration_nfe"] == 2 * len(ems_grid(20, steps=(3, 5))) for r in v3)  # 2 JVPs per lambda
    assert all(np.isfinite(np.load(out)[r["key"]]).all() for r in v3)
    with pytest.raises(KeyError, match="no EMS"):
        sample.run(str(experiment), str(tiny_scale), str(model), str(tmp_path / "x.npz"), method="vp_eps")


def test_ems_sizes_come_from_the_entry_else_the_scale_else_the_defaults():
    from flowrepro.stages.ems import EMS_OPTIONS, ems_settings

    scale_section = {"ems": {"n_calibration": 4096, "ems_lambdas": 1200}}
    sizes, solver = ems_settings({"sampler": "dpm_solver_v3"}, scale_section)
    assert sizes == {"n_calibration": 4096, "ems_lambdas": 1200, "ems_batch": EMS_OPTIONS["ems_batch"]} and solver == {}
    sizes, solver = ems_settings({"sampler": {"name": "dpm_solver_v3", "n_calibration": 64, "order": 3}}, scale_section)
    assert sizes["n_calibration"] == 64 and sizes["ems_lambdas"] == 1200 and solver == {"order": 3}
    assert ems_settings({"sampler": "dpm_solver_v3"})[0] == EMS_OPTIONS

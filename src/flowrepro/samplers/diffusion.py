"""The exact harness for diffusion samplers: diffusers schedulers driven by a closed-form model.

VP diffusion of a Gaussian mixture target x1 ~ sum_k pi_k N(mu_k, Sigma_k) (the datasets of
:mod:`flowrepro.data.gmm`): x_t = alpha_t x1 + sigma_t eps with alpha_t^2 = alphabar_t from the
DDPM linear-beta schedule (1000 steps, beta 1e-4 .. 0.02) and sigma_t^2 = 1 - alpha_t^2. Then

    p_t = sum_k pi_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I),   eps*(x, t) = -sigma_t grad log p_t(x).

No new algebra is needed: the linear flow path x_u = (1 - u) x0 + u x1 has the same marginal up
to scale, x_VP = (alpha + sigma) x_u at u = alpha / (alpha + sigma), so

    grad log p_VP(x) = grad log p_u(x / (alpha + sigma)) / (alpha + sigma),

and :meth:`GaussianMixture.score` (exact) gives eps* (:func:`exact_eps`, a slow cross-check);
:class:`ExactMixture` writes the same posterior in closed form with one eigendecomposition per
component, which the harness uses. We parameterise noise levels by the
"VE sigma" s = sigma / alpha, the variable of every diffusers sigma-space scheduler; in y = x / alpha
the probability-flow ODE is dy/ds = eps*(y / sqrt(1 + s^2), s) (DDIM's ODE), which
:func:`reference_endpoint` solves to tolerance 1e-8 with dopri5 for the ground truth.

:func:`run_scheduler` drives any diffusers scheduler with this model, written once: trailing
timesteps (start at t = 999 for every scheduler), ``clip_sample=False`` and thresholding off,
``scale_model_input`` before each call, the model evaluated at the noise level the scheduler
actually uses (its ``sigmas[i]`` where it has them, else ``alphas_cumprod[t]``), and NFE counted by
:class:`NFECounter`, so PNDM's Runge-Kutta warm-up and Heun's 2K - 1 calls show.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np

from flowrepro.registry import SAMPLERS
from flowrepro.samplers.nfe import NFECounter

#: The training schedule every scheduler shares (DDPM, Ho et al. 2020).
TRAIN_CONFIG = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                "beta_schedule": "linear", "prediction_type": "epsilon"}

#: name -> (diffusers class, config overrides). Third-order multistep solvers use the Euler
#: final step (DESIGN.md pitfall: a third-order jump to sigma_min at >= 15 steps blows up).
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "thresholding": False, "set_alpha_to_one": True}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": False, "set_alpha_to_one": True}),
    "plms": ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": True}),
    "dpmsolver2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "solver_order": 2,
                                                    "final_sigmas_type": "sigma_min"}),
    "dpmsolver3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "solver_order": 3,
                                                    "final_sigmas_type": "sigma_min", "euler_at_final": True}),
    "dpmsolver++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmsolver++3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3,
                                                      "euler_at_final": True}),
    "dpmsolver++2s": ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmsolver++3s": ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
    "deis2": ("DEISMultistepScheduler", {"solver_order": 2}),
    "deis3": ("DEISMultistepScheduler", {"solver_order": 3}),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2}),
    "unipc3": ("UniPCMultistepScheduler", {"solver_order": 3}),
    "euler_discrete": ("EulerDiscreteScheduler", {}),
    "heun_discrete": ("HeunDiscreteScheduler", {"clip_sample": False}),
    "lms": ("LMSDiscreteScheduler", {}),
}

#: schedule name -> scheduler flags (only where the scheduler supports them).
SCHEDULE_FLAGS = {"uniform": {}, "karras": {"use_karras_sigmas": True}, "logsnr": {"use_lu_lambdas": True}}


def vp_alpha_sigma(s: float) -> tuple[float, float]:
    """VP (alpha, sigma) of a VE sigma s = sigma / alpha."""
    alpha = 1.0 / math.sqrt(1.0 + s * s)
    return alpha, s * alpha


class ExactMixture:
    """Closed-form posterior of a Gaussian mixture under x = a x1 + b x0, x0 ~ N(0, I).

    Given component k, x ~ N(a mu_k, C_k) with C_k = a^2 Sigma_k + b^2 I = U_k diag(a^2 lam_k + b^2) U_k^T
    (eigendecomposition of Sigma_k, computed once), and

        E[x1 | x, k] = mu_k + a Sigma_k C_k^{-1} (x - a mu_k),   E[x0 | x, k] = b C_k^{-1} (x - a mu_k),

    mixed with responsibilities w_k ∝ pi_k N(x; a mu_k, C_k). The VP eps-prediction is E[x0 | x]
    at (a, b) = (alpha, sigma) (= -sigma grad log p_t, Tweedie); the linear-flow velocity is
    E[x1 | x] - E[x0 | x] at (a, b) = (t, 1 - t). One scalar level per call: the (K, d, d) algebra
    is shared by the batch, which makes this ~50x faster than per-sample Cholesky solves; ``eps`` and
    ``velocity`` compute only the combination they return.
    """

    def __init__(self, gmm) -> None:
        import torch

        lam, vecs = np.linalg.eigh(np.asarray(gmm.covs, dtype=np.float64))
        self.gmm = gmm
        self.lam = torch.as_tensor(lam)  # (K, d)
        self.vecs = torch.as_tensor(vecs)  # (K, d, d), columns are eigenvectors
        self.means = torch.as_tensor(np.asarray(gmm.means, dtype=np.float64))
        self.log_w = torch.log(torch.as_tensor(np.asarray(gmm.weights, dtype=np.float64)))
        self.dim = gmm.dim

    def _responsibilities(self, x, a: float, b: float):
        """(proj, var, resp): U_k^T (x - a mu_k) as (K, n, d), the eigenvalues of C_k (K, d), and the
        responsibilities w_k(x) as (K, n). Components lead, so each product is one batched matmul."""
        import torch

        var = a * a * self.lam + b * b  # (K, d): eigenvalues of C_k
        centred = x.to(torch.float64).unsqueeze(0) - a * self.means.unsqueeze(1)  # (K, n, d)
        proj = torch.bmm(centred, self.vecs)  # U_k^T (x - a mu_k)
        log_prob = -0.5 * (proj * proj / var.unsqueeze(1)).sum(-1) - 0.5 * torch.log(var).sum(-1, keepdim=True)
        return proj, var, torch.softmax(log_prob + self.log_w.unsqueeze(1), dim=0)

    def _mixed(self, proj, resp, coeff):
        """sum_k w_k U_k diag(coeff_k) proj_k: the responsibility-weighted back-projection, (n, d)."""
        import torch

        return torch.bmm(proj * (coeff.unsqueeze(1) * resp.unsqueeze(-1)), self.vecs.transpose(1, 2)).sum(0)

    def posterior(self, x, a: float, b: float):
        """(E[x1 | x], E[x0 | x]) in float64 for a batch x (n, d) at scalar coefficients (a, b)."""
        proj, var, resp = self._responsibilities(x, a, b)
        return resp.T @ self.means + self._mixed(proj, resp, a * self.lam / var), self._mixed(proj, resp, b / var)

    def noise_mean(self, x, a, b):
        """E[x0 | x] alone, in float64, at coefficients (a, b) (floats, or 0-d tensors a JVP differentiates)."""
        proj, var, resp = self._responsibilities(x, a, b)
        return self._mixed(proj, resp, b / var)

    def eps_jacobian_diagonal(self, x, a: float, b: float):
        """diag(d eps / d x) of eps = E[x0 | x] at coefficients (a, b), in closed form, float64 (n, d).

        With e_k = b C_k^{-1} (x - a mu_k) and responsibilities w_k (grad w_k = -w_k (e_k - eps) / b),
        eps = sum_k w_k e_k and d eps/dx = b sum_k w_k C_k^{-1} - (sum_k w_k e_k e_k^T - eps eps^T) / b.
        """
        import torch

        proj, var, resp = self._responsibilities(x, a, b)
        e_k = b * torch.bmm(proj / var.unsqueeze(1), self.vecs.transpose(1, 2))  # (K, n, d)
        eps = (resp.unsqueeze(-1) * e_k).sum(0)
        inverse_diagonal = torch.einsum("kde,ke->kd", self.vecs * self.vecs, 1.0 / var)  # diag(C_k^{-1})
        return b * resp.T @ inverse_diagonal - ((resp.unsqueeze(-1) * e_k * e_k).sum(0) - eps * eps) / b

    def eps(self, x, s: float):
        """eps*(x) at VE noise level s = sigma / alpha (x in VP space): E[x0 | x] at (alpha, sigma)."""
        alpha, sigma = vp_alpha_sigma(float(s))
        return self.noise_mean(x, alpha, sigma).to(x.dtype)

    def velocity(self, x, t):
        """Exact linear-path velocity E[x1 | x] - E[x0 | x] at time t (scalar, or a tensor of equal times
        as the solvers pass), as one back-projection."""
        t = float(t.reshape(-1)[0]) if hasattr(t, "reshape") else float(t)
        proj, var, resp = self._responsibilities(x, t, 1.0 - t)
        return (resp.T @ self.means + self._mixed(proj, resp, (t * self.lam - (1.0 - t)) / var)).to(x.dtype)


def exact_eps(gmm, x, s: float):
    """eps*(x) = -sigma grad log p(x) via the linear-path score (slow, independent check of ExactMixture)."""
    alpha, sigma = vp_alpha_sigma(float(s))
    scale = alpha + sigma
    return -sigma / scale * gmm.score(x / scale, alpha / scale)


def make_scheduler(name: str, schedule: str = "uniform", **overrides):
    """Build the diffusers scheduler registered as ``name`` with the shared training schedule."""
    import inspect

    import diffusers

    cls_name, config = SCHEDULERS[name]
    cls = getattr(diffusers, cls_name)
    params = inspect.signature(cls.__init__).parameters
    flags = SCHEDULE_FLAGS[schedule]
    if any(flag not in params for flag in flags):
        raise ValueError(f"{name} ({cls_name}) has no {schedule} schedule option")
    options = {**TRAIN_CONFIG, **config, **flags, **overrides}
    if "timestep_spacing" in params:  # DPMSolverSinglestep has no such argument (it is linspace)
        options.setdefault("timestep_spacing", "trailing")
    if "thresholding" in params:
        options["thresholding"] = False
    if flags and "final_sigmas_type" in params:
        options["final_sigmas_type"] = "zero"  # Karras / Lu lambdas + sigma_min: a zero-length last step gives NaN
    scheduler = cls(**options)
    if hasattr(scheduler, "get_lms_coefficient"):
        _cache_lms_coefficients(scheduler)
    return scheduler


#: LMS coefficients by (sigmas, order, step, term): diffusers integrates each one with scipy's quad
#: at every step (1.8 ms per call here, against 0.1 ms for the other schedulers' adapters); a
#: schedule gives the same numbers every run, so each is computed once per process.
_LMS_COEFFICIENTS: dict[tuple, float] = {}


def _cache_lms_coefficients(scheduler) -> None:
    compute = scheduler.get_lms_coefficient

    def cached(order, t, current_order):
        key = (tuple(float(s) for s in scheduler.sigmas), order, t, current_order)
        if key not in _LMS_COEFFICIENTS:
            _LMS_COEFFICIENTS[key] = compute(order, t, current_order)
        return _LMS_COEFFICIENTS[key]

    scheduler.get_lms_coefficient = cached


def _levels(scheduler) -> tuple[list[float], float]:
    """VE sigma of the model call at each position of ``timesteps`` and the final noise level."""
    timesteps = scheduler.timesteps
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(timesteps) + 1:
        values = [float(v) for v in sigmas]
        return values[:-1], values[-1]
    acp = scheduler.alphas_cumprod.double()
    ve = [math.sqrt((1 - float(acp[int(t)])) / float(acp[int(t)])) for t in timesteps]
    final = float(getattr(scheduler, "final_alpha_cumprod", acp[0]))
    return ve, math.sqrt(max(1 - final, 0.0) / final)


@functools.lru_cache(maxsize=None)
def training_alphas_cumprod() -> np.ndarray:
    """alphabar_t of the shared training schedule (TRAIN_CONFIG), t = 0 .. 999, float64, read-only."""
    table = make_scheduler("ddim").alphas_cumprod.double().numpy()
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=None)
def _training_log_sigmas() -> np.ndarray:
    acp = training_alphas_cumprod()
    return 0.5 * np.log((1 - acp) / acp)


def timestep_for_level(s: float) -> float:
    """Continuous training timestep whose VE sigma is s (log-sigma interpolation, as diffusers does).

    A trained network takes a timestep, not a sigma: this is how it is evaluated at the noise level
    the scheduler actually uses, fractional timesteps (Karras, logSNR) included.
    """
    log_sigmas = _training_log_sigmas()
    return float(np.interp(math.log(max(s, 1e-12)), log_sigmas, np.arange(len(log_sigmas))))


@functools.lru_cache(maxsize=None)
def calls_for_steps(name: str, steps: int, schedule: str = "uniform") -> int:
    """Model calls the scheduler's loop will make for ``steps`` (a plan; the counter has the truth)."""
    scheduler = make_scheduler(name, "uniform" if schedule == "boss" else schedule)  # a BOSS grid has as many steps
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def run_scheduler(model: Callable, x_t, name: str, steps: int, schedule: str = "uniform",
                  timesteps: list[int] | None = None, **overrides):
    """Sample with diffusers scheduler ``name`` for ``steps`` steps.

    ``model(x_vp, s)`` returns eps at VE noise level s; ``x_t`` is the starting noise in VP space
    (unit variance). ``timesteps`` (descending training steps, e.g. a BOSS grid) replace the
    scheduler's own spacing where it accepts custom ones. Returns (x at the final level, VP space;
    (first, final) VE sigma).
    """
    import inspect

    import torch

    if schedule == "boss" and timesteps is None:
        raise ValueError(f"{name}: the boss schedule needs its timesteps (flowrepro.samplers.boss_diffusion.boss_timesteps)")
    scheduler = make_scheduler(name, "uniform" if timesteps is not None else schedule, **overrides)
    if timesteps is not None:
        if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError(f"{name} ({type(scheduler).__name__}) takes no custom timesteps, so no BOSS grid")
        scheduler.set_timesteps(timesteps=[int(t) for t in timesteps])
    else:
        scheduler.set_timesteps(steps)
    levels, final = _levels(scheduler)
    x = x_t * scheduler.init_noise_sigma  # sigma-space schedulers keep y = x / alpha
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            x_in = scheduler.scale_model_input(x, t)  # VP-space input for every scheduler
            eps = model(x_in, levels[i])
            x = scheduler.step(eps, t, x).prev_sample
    alpha, _ = vp_alpha_sigma(final)
    vp_scale = alpha if float(scheduler.init_noise_sigma) != 1.0 else 1.0
    return x * vp_scale, (levels[0], final)


def reference_endpoint(exact: ExactMixture, x_t, s_start: float, s_ends: list[float], rtol: float = 1e-8):
    """Probability-flow ODE solution from VP noise ``x_t`` at level s_start, at each level in s_ends.

    The VP PF-ODE (DDIM's dy/ds = eps*) and the linear-path flow ODE move along the same curves up to
    the change of variables u = 1 / (1 + s), x_VP = (alpha + sigma) z (both are the conditional-mean
    flows of one family of Gaussian paths), and the flow form is smooth on u in [~0, 1], so we solve
    dz/du = v*(z, u) with dopri5 in float64. Returns a dict s_end -> VP x.
    """
    import torch
    from torchdiffeq import odeint

    def scale(s: float) -> float:
        return sum(vp_alpha_sigma(s))

    def rhs(u, z):
        return exact.velocity(z.to(torch.float64), u)

    ends = sorted(set(float(s) for s in s_ends), reverse=True)
    grid = torch.tensor([1.0 / (1.0 + s_start)] + [1.0 / (1.0 + s) for s in ends], dtype=torch.float64)
    with torch.no_grad():
        zs = odeint(rhs, x_t.to(torch.float64) / scale(s_start), grid, method="dopri5", rtol=rtol, atol=rtol)
    return {s: (zs[i + 1] * scale(s)).to(x_t.dtype) for i, s in enumerate(ends)}


def _register(name: str) -> None:
    def sampler(model, x_t, steps: int, schedule: str = "uniform", timesteps=None, **overrides):
        return run_scheduler(model, x_t, name, steps, schedule, timesteps, **overrides)

    sampler.__doc__ = f"diffusers {SCHEDULERS[name][0]} ({name}) on a VP eps-model; see run_scheduler."
    SAMPLERS.register(name)(sampler)


for _name in SCHEDULERS:
    _register(_name)

__all__ = ["SCHEDULERS", "ExactMixture", "NFECounter", "exact_eps", "make_scheduler", "run_scheduler", "reference_endpoint",
           "calls_for_steps", "timestep_for_level", "training_alphas_cumprod", "vp_alpha_sigma"]

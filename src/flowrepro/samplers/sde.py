"""Stochastic samplers of a trained flow: the interpolant SDE and score-SDE predictor-corrector.

``interpolant_sde`` (Albergo, Boffi, Vanden-Eijnden, Stochastic Interpolants, Sec. 2.3): for any
eps(t) >= 0 the SDE

    dX = [v(X, t) + eps(t) s(X, t)] dt + sqrt(2 eps(t)) dW,   s = grad log rho_t = -E[x0 | x_t] / a(t)

has the same marginals rho_t as the ODE dX = v dt (the score term and the noise cancel in the
Fokker-Planck equation), and its diffusion pulls samples back towards rho_t when v is wrong.
We take eps(t) = epsilon a(t)^2, so eps(t) s = -epsilon a(t) E[x0 | x_t] stays bounded as a -> 0.
Euler-Maruyama, one network call per step (velocity and noise prediction come from one output).

``predictor_corrector`` (Song et al., Score SDE, Alg. 2 for the VP SDE) in diffusion time
s = 1 - t, beta(s) linear: a reverse-diffusion Euler-Maruyama predictor
x <- x + [beta x / 2 + beta score] ds + sqrt(beta ds) z, preceded at each step by one Langevin
corrector step x <- x + h score + sqrt(2 h) z, h = 2 alpha (snr |z| / |score|)^2, alpha = 1 - beta ds.
Two network calls per step; the output is the last predictor's mean (no final noise), as in the paper.

``euler_maruyama``: the same predictor with no corrector, one network call per step: the sampler
the official VP configs run (yang-song/score_sde_pytorch configs/vp/*: ``sampling.predictor =
'euler_maruyama'``, ``sampling.corrector = 'none'``, N = 1000; its update x <- x + [beta x / 2 +
beta score] |ds| + sqrt(beta |ds|) z is the reverse SDE's Euler-Maruyama step, denoised at the end).
"""
from __future__ import annotations

from flowrepro.generative.paths import per_sample
from flowrepro.registry import SAMPLERS


def _model_path(model):
    """The probability path of a (possibly NFE-counted) model from ``stages.train.load_models``."""
    inner = getattr(model, "model", model)
    return getattr(inner, "path")


def _noise_like(x, generator):
    import torch

    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)


@SAMPLERS.register("sde")
def interpolant_sde(model, x0, times, epsilon: float = 1.0, seed: int = 0):
    import torch

    path = _model_path(model)
    generator = torch.Generator().manual_seed(seed)
    x = x0
    with torch.no_grad():
        for i, (t_now, t_next) in enumerate(zip(times[:-1], times[1:])):
            h = float(t_next - t_now)
            t = torch.full((x.shape[0],), float(t_now), dtype=x.dtype, device=x.device)
            velocity, noise_prediction = model.velocity_and_epsilon(x, t)
            a = per_sample(path.coefficients(t)[0], x)
            drift = velocity - epsilon * a * noise_prediction
            x = x + h * drift
            if i < len(times) - 2:  # no noise on the last step: it lands on the data
                x = x + (2 * epsilon * h) ** 0.5 * a * _noise_like(x, generator)
    return x


interpolant_sde.calls_per_step = 1
interpolant_sde.stochastic = True  # takes seed=: its own noise, fixed per run


def _reverse_vp_sde(model, x0, times, snr: float | None, seed: int):
    """The reverse VP-SDE predictor over ``times`` (flow time), with one Langevin corrector step
    before each predictor step when ``snr`` is given; returns the last predictor's mean."""
    import torch

    from flowrepro.generative.paths import VPPath

    path = _model_path(model)
    if not isinstance(path, VPPath):
        raise ValueError(f"the reverse-SDE samplers need a model trained on the vp path, not {type(path).__name__}")
    generator = torch.Generator().manual_seed(seed)
    times = [min(float(t), 1 - path.t_eps) for t in times]
    x = mean = x0

    def score(x, t_now):
        t = torch.full((x.shape[0],), t_now, dtype=x.dtype, device=x.device)
        return -model.epsilon(x, t) / per_sample(path.coefficients(t)[0], x)

    with torch.no_grad():
        for t_now, t_next in zip(times[:-1], times[1:]):
            ds = t_next - t_now
            beta = path.beta_min + (path.beta_max - path.beta_min) * (1 - t_now)
            if snr is not None:  # corrector: one Langevin step at the current time
                grad, z = score(x, t_now), _noise_like(x, generator)
                alpha = 1 - beta * ds
                step = 2 * alpha * (snr * z.flatten(1).norm(dim=1).mean() / grad.flatten(1).norm(dim=1).mean()) ** 2
                x = x + step * grad + (2 * step) ** 0.5 * z
            # predictor: reverse-diffusion Euler-Maruyama step towards the data
            mean = x + (0.5 * beta * x + beta * score(x, t_now)) * ds
            x = mean + (beta * ds) ** 0.5 * _noise_like(x, generator)
    return mean  # the last step's mean: no noise added at the end


@SAMPLERS.register("pc")
def predictor_corrector(model, x0, times, snr: float = 0.16, seed: int = 0):
    """Score SDE's predictor-corrector sampler (Alg. 2): Euler-Maruyama predictor + one Langevin corrector step."""
    return _reverse_vp_sde(model, x0, times, snr, seed)


predictor_corrector.calls_per_step = 2
predictor_corrector.stochastic = True


@SAMPLERS.register("euler_maruyama")
def reverse_sde_euler_maruyama(model, x0, times, seed: int = 0):
    """Score SDE's VP sampler as its official configs run it: Euler-Maruyama predictor, no corrector."""
    return _reverse_vp_sde(model, x0, times, None, seed)


reverse_sde_euler_maruyama.calls_per_step = 1
reverse_sde_euler_maruyama.stochastic = True


class PerturbedVelocity:
    """v(x, t) + c x: a known velocity error, the noise prediction left exact (for robustness checks)."""

    def __init__(self, model, c: float) -> None:
        self.model, self.c = model, c

    @property
    def path(self):
        return _model_path(self.model)

    def __call__(self, x, t):
        return self.model(x, t) + self.c * x

    def epsilon(self, x, t):
        return self.model.epsilon(x, t)

    def velocity_and_epsilon(self, x, t):
        velocity, epsilon = self.model.velocity_and_epsilon(x, t)
        return velocity + self.c * x, epsilon

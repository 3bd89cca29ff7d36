"""CAF's sampler and inversion (Park et al., NeurIPS 2024; official ``CAFDenoiser.sample`` and
``inversion`` in mlvlab/CAF flow/pipeline_caf.py), and the flow round trips behind ``inversion_error``.

Sampling: v0 = v_phi(x0, 0) once, then on a grid 0 = t_0 < ... < t_N = 1 (official: uniform)

    z_{i+1} = z_i + v0 dt_i + (t_i + dt_i / 2) a_theta(z_i, t_i, v0) dt_i,   dt_i = t_{i+1} - t_i,

the exact increment of x(t) = x0 + v0 t + a t^2 / 2 over a step when a is constant
(v0 dt + a ((t + dt)^2 - t^2) / 2). N steps cost N + 1 network calls (``extra_calls = 1``: the
sample stage gives an ``nfe:`` budget N = nfe - 1 steps). The official sampler clamps the final
image to [-1, 1]; ours returns z as it is, as every other sampler here (moons is not in [-1, 1]).

Inversion (official ``inversion``): from data z = x1 at t = 1, v0 = v_phi(x1, 1) (the velocity net
is trained along the whole path, so it estimates v0 at the data end too), then backwards

    z_{i-1} = z_i - v0 dt - (t_i - dt / 2) a_theta(z_i, t_i, v0) dt,

and the round trip (``evaluate_reconstruction.py``) regenerates from the inverted noise with the
same v0 (not re-estimated at the noise): 2N + 1 calls. The Euler round trip, the baseline for a
flow model v(x, t), inverts with Euler backwards (x_{i-1} = x_i - dt v(x_i, t_i)) and regenerates
with Euler forwards on the same grid: 2N calls.
"""
from __future__ import annotations

from collections.abc import Callable

from flowrepro.registry import SAMPLERS
from flowrepro.samplers.ode import time_vector


def caf_generate(model, x0, times, v0=None):
    """z_N from noise x0 on ``times`` (module docstring); ``v0``: a given initial velocity (round trip)."""
    import torch

    with torch.no_grad():
        z = x0
        v0 = model.initial_velocity(x0) if v0 is None else v0
        for t_now, t_next in zip(times[:-1], times[1:]):
            dt = float(t_next - t_now)
            z = z + v0 * dt + (float(t_now) + dt / 2) * model.acceleration(z, time_vector(z, t_now), v0) * dt
    return z


def caf_invert(model, x1, times):
    """(noise, v0): data x1 taken back along ``times`` with v0 = v_phi(x1, 1) (module docstring)."""
    import torch

    with torch.no_grad():
        z = x1
        v0 = model.initial_velocity(x1, time_vector(x1, times[-1]))
        for t_now, t_prev in zip(times[:0:-1], times[-2::-1]):
            dt = float(t_now - t_prev)
            z = z - v0 * dt - (float(t_now) - dt / 2) * model.acceleration(z, time_vector(z, t_now), v0) * dt
    return z, v0


@SAMPLERS.register("caf")
def caf(model, x0, times, **_):
    """CAF's sampler: N = len(times) - 1 steps, N + 1 calls."""
    return caf_generate(model, x0, times)


caf.extra_calls = 1  # v0 = v_phi(x0, 0), once per sample, beside one call a step


def caf_round_trip(model, x1, times):
    """Data -> noise -> data with CAF's inversion and sampler, the same v0 both ways."""
    noise, v0 = caf_invert(model, x1, times)
    return caf_generate(model, noise, times, v0)


def euler_round_trip(model, x1, times):
    """Data -> noise -> data with Euler on the same grid, backwards then forwards."""
    import torch

    from flowrepro.samplers.ode import integrate_fixed

    with torch.no_grad():
        z = x1
        for t_now, t_prev in zip(times[:0:-1], times[-2::-1]):
            z = z - float(t_now - t_prev) * model(z, time_vector(z, t_now))
    return integrate_fixed(model, z, times, "euler")


#: Flow samplers with a data -> noise -> data round trip (``round_trip: true`` in a sampling entry):
#: name -> f(model, x1, times) -> x1'.
FLOW_ROUND_TRIPS: dict[str, Callable] = {"caf": caf_round_trip, "euler": euler_round_trip}


def flow_round_trip(name: str, model64, samples, times, points: int, device: str):
    """The first ``points`` samples of a run through its sampler's round trip on the run's grid, in
    float64 (``model64``, the network's float64 copy) so that the error measured is the method's, not rounding."""
    import torch

    z = torch.as_tensor(samples[:points], dtype=torch.float64, device=device)
    return FLOW_ROUND_TRIPS[name](model64, z, times).cpu().numpy()

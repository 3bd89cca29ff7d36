"""Lion-K's box constraint (Chen, Liang, Liu & Liu, "Lion Secretly Solves Constrained Optimization:
As Lyapunov Predicts", ICLR 2024, arXiv:2310.05898): Lion with decoupled weight decay lambda,

    x_{t+1} = (1 - eta_t lambda) x_t - eta_t sign(c_t),

solves  min f(x)  subject to  ||x||_inf <= 1 / lambda.  Coordinatewise
|x_{t+1}| <= (1 - eta lambda)|x_t| + eta  (for eta lambda <= 1), so with e_t = max(lambda ||x_t||_inf - 1, 0):

* phase 1 (entry): the excess contracts at least geometrically, e_t <= e_0 prod_{s<=t} (1 - eta_s lambda);
* phase 2 (invariance): once lambda ||x_t||_inf <= 1 it stays <= 1 at every later step.

:class:`LionK` is pytorch_optimizer's Lion (the suite's ``lion``; its weight decay is decoupled,
p <- p (1 - lr lambda)) that also records lambda ||x_t||_inf over all its parameters after every
step, and reports :func:`box_metrics` through ``run_metrics()``, which the runner adds to a run's
summary rows.

The paper's Lyapunov function. Continuous time (Sec. 3, Theorem 3.1): for
m' = -alpha grad f(x) - gamma m,  x' = grad K(m - eps (alpha grad f(x) + gamma m)) - lambda x,

    H(x, m) = alpha f(x) + (gamma / lambda) K*(lambda x)
              + (1 - eps gamma) / (1 + eps lambda) (K*(lambda x) + K(m) - lambda m^T x),

non-increasing when eps gamma <= 1 (we re-derived dH/dt <= 0 for differentiable K: the cross term
vanishes exactly at that coefficient, and Fenchel-Young makes the bracket >= 0). Discrete time
(Sec. 4, Theorem 4.1), in the paper's sign convention m_{t+1} = beta2 m_t - (1 - beta2) grad f(x_t),
m~ = beta1 m_t - (1 - beta1) grad f(x_t), x_{t+1} = x_t + eps (grad K(m~) - lambda x_{t+1}) (implicit
weight decay), full gradients, f L-smooth, beta1 <= beta2: the same H under the map alpha = gamma =
(1 - beta2)/eps, eps_c = eps (1 - beta1)/(1 - beta2), divided by alpha,

    H(x, m) = f(x) + K*(lambda x) / lambda + c (K*(lambda x) + K(m) - lambda m^T x),
    c = eps beta1 / (eps lambda (1 - beta1) + 1 - beta2),

obeys H_{t+1} - H_t <= -eps Delta_t + (L/2) ||x_{t+1} - x_t||^2 with Delta_t >= 0: it decreases up to
an O(L eps^2) term per step. For Lion K(m) = ||m||_1 and K*(lambda x) is 0 on the box
lambda ||x||_inf <= 1 and +inf outside: H is finite only inside the box (phase 2; phase 1 is the box
distance above). :func:`lyapunov_h` computes it. Deviations, all explicit: (1) the paper's m is minus
torch's ``exp_avg`` (its sign matters: the term is +lambda exp_avg^T x); (2) pytorch_optimizer's weight
decay is explicit, x_{t+1} = (1 - eps lambda) x_t - eps sign(.), not the paper's implicit
(x_t - eps sign(.)) / (1 + eps lambda): they differ by O(eps^2 lambda) per step and keep the same box
(tests/test_optim_second_order.py checks the theorem's bound on the explicit scheme); (3) the runner's
f(x_t) is a minibatch loss, and the theorem is for full gradients: per-step decrease is not promised
for minibatch training, whose loss noise alone moves H. ``lyapunov_increases`` counts rises beyond
float32 rounding (relative 1e-6 of the terms' magnitudes), not beyond the O(L eps^2) allowance,
because L is unknown for a network; the tests check the allowance where L is known.

The runner hands the optimizer each step's loss through ``observe_loss`` (f at the iterate the step
starts from); :class:`LionK` then records H(x_t, m_t) before it steps. Without that call (a plain
torch loop) nothing is recorded unless ``step`` gets a closure, in torch's convention.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

#: float32 rounding of (1 - eta lambda) x - eta: a relative slack on the box test
ROUNDING_SLACK = 1e-6


def box_metrics(inf_norms: Sequence[float], weight_decay: float, lrs: Sequence[float],
                slack: float = ROUNDING_SLACK) -> dict[str, float]:
    """Box metrics of one run.

    ``inf_norms[t]`` = ||x_t||_inf (t = 0 before the first step), ``lrs[t - 1]`` = eta of step t.
    Returns ``max_abs_weight_times_lambda`` (max over t >= entry of lambda ||x_t||_inf; NaN if the
    box was never entered), ``box_entry_step`` (first t with lambda ||x_t||_inf <= 1 + slack; inf if
    never), ``initial_abs_weight_times_lambda``, ``final_abs_weight_times_lambda``,
    ``box_excess_final`` (e_T) and ``box_excess_bound`` (e_0 prod (1 - eta_t lambda); NaN when some
    eta_t lambda > 1, where the contraction argument does not hold).
    """
    if len(inf_norms) != len(lrs) + 1:
        raise ValueError(f"{len(inf_norms)} norms need {len(inf_norms) - 1} lrs, got {len(lrs)}")
    scaled = [weight_decay * n for n in inf_norms]
    entry = next((t for t, s in enumerate(scaled) if s <= 1.0 + slack), None)
    bound = max(scaled[0] - 1.0, 0.0)
    for eta in lrs:
        bound = bound * (1.0 - eta * weight_decay) if eta * weight_decay <= 1.0 else math.nan
    return {
        "max_abs_weight_times_lambda": max(scaled[entry:]) if entry is not None else math.nan,
        "box_entry_step": float(entry) if entry is not None else math.inf,
        "initial_abs_weight_times_lambda": scaled[0],
        "final_abs_weight_times_lambda": scaled[-1],
        "box_excess_final": max(scaled[-1] - 1.0, 0.0),
        "box_excess_bound": bound,
    }


#: burn-in steps skipped before counting increases of H (the first few steps of a run)
LYAPUNOV_BURN_IN = 5


def lyapunov_coefficient(lr: float, weight_decay: float, betas: Sequence[float]) -> float:
    """c = eps beta1 / (eps lambda (1 - beta1) + 1 - beta2): the weight of the Fenchel-Young gap in H."""
    beta1, beta2 = betas
    return lr * beta1 / (lr * weight_decay * (1.0 - beta1) + (1.0 - beta2))


def lyapunov_h(f: float, x: Any, m: Any, weight_decay: float, lr: float, betas: Sequence[float],
               slack: float = ROUNDING_SLACK) -> float:
    """The paper's discrete-time H(x, m) for Lion (K = l1), m in the paper's sign convention.

    H = f + K*(lambda x)/lambda + c (K*(lambda x) + ||m||_1 - lambda m^T x), with K*(lambda x) = 0 when
    lambda ||x||_inf <= 1 + slack (float32 rounding of the box), +inf otherwise; ``x`` and ``m`` are flat
    tensors or arrays of equal length (all parameters concatenated). Torch's Lion passes m = -exp_avg.
    """
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    m = torch.as_tensor(m, dtype=torch.float64).reshape(-1)
    if weight_decay * x.abs().max().item() > 1.0 + slack:
        return math.inf
    gap = m.abs().sum().item() - weight_decay * torch.dot(m, x).item()
    return float(f) + lyapunov_coefficient(lr, weight_decay, betas) * gap


def lyapunov_metrics(values: Sequence[float], scales: Sequence[float] | None = None,
                     burn_in: int = LYAPUNOV_BURN_IN, rounding: float = ROUNDING_SLACK) -> dict[str, float]:
    """Summary of H_0, ..., H_{T-1} along a run.

    ``lyapunov_increases``: fraction of consecutive finite pairs (t, t + 1), t >= first finite index +
    ``burn_in``, with H_{t+1} - H_t > rounding * max(scale_t, scale_{t+1}) (``scales[t]`` = the magnitude
    of H's terms, |f| + c (||m||_1 + lambda |m^T x|); |H| when not given); NaN with no such pair.
    ``lyapunov_drop``: (H_a - H_b) / |H_a| from the first to the last finite value (NaN with fewer than
    two). ``lyapunov_initial``/``lyapunov_final`` (first/last finite value, NaN if none) and
    ``lyapunov_finite_fraction`` (share of steps inside the box, where H is finite).
    """
    scales = list(scales) if scales is not None else [abs(v) for v in values]
    finite = [t for t, v in enumerate(values) if math.isfinite(v)]
    pairs = [t for t in finite if finite and t >= finite[0] + burn_in
             and t + 1 < len(values) and math.isfinite(values[t + 1])]
    ups = [values[t + 1] - values[t] > rounding * max(scales[t], scales[t + 1], 1e-30) for t in pairs]
    first, last = (values[finite[0]], values[finite[-1]]) if finite else (math.nan, math.nan)
    return {
        "lyapunov_increases": sum(ups) / len(ups) if ups else math.nan,
        "lyapunov_drop": (first - last) / abs(first) if len(finite) >= 2 and first != 0 else math.nan,
        "lyapunov_initial": first,
        "lyapunov_final": last,
        "lyapunov_finite_fraction": len(finite) / len(values) if values else math.nan,
    }


def build_lion_k(params: Any, lr: float, weight_decay: float = 1.0, **kw: Any) -> Any:
    """pytorch_optimizer's Lion with decoupled weight decay, recording lambda ||x_t||_inf."""
    from pytorch_optimizer import Lion  # slow import: only when used

    class LionK(Lion):
        def __init__(self) -> None:
            super().__init__(params, lr=lr, weight_decay=weight_decay, weight_decouple=True, **kw)
            self.box_lambda = float(weight_decay)
            self.inf_norms = [self._inf_norm()]
            self.lrs: list[float] = []
            self.lyapunov: list[float] = []  # H(x_t, m_t), t = 0 .. T-1, when the loss was observed
            self.lyapunov_scales: list[float] = []
            self._pending_loss: float | None = None

        def _inf_norm(self) -> float:
            with torch.no_grad():
                return max(p.detach().abs().max().item() for g in self.param_groups for p in g["params"])

        def observe_loss(self, loss: Any) -> None:
            """f(x_t): the loss at the iterate the next step starts from (called by the runner)."""
            self._pending_loss = float(loss)

        @torch.no_grad()
        def _record_lyapunov(self, f: float) -> None:
            group = self.param_groups[0]
            eps, betas = float(group["lr"]), group["betas"]
            if self.box_lambda * self.inf_norms[-1] > 1.0 + ROUNDING_SLACK:  # K*(lambda x) = +inf
                self.lyapunov.append(math.inf)
                self.lyapunov_scales.append(math.inf)
                return
            l1 = dot = 0.0  # paper's m = -exp_avg: ||m||_1 = ||exp_avg||_1, -lambda m^T x = +lambda exp_avg^T x
            for g in self.param_groups:
                for p in g["params"]:
                    e = self.state[p].get("exp_avg") if p in self.state else None
                    if e is not None:
                        l1 += e.double().abs().sum().item()
                        dot += torch.dot(e.double().reshape(-1), p.double().reshape(-1)).item()
            c = lyapunov_coefficient(eps, self.box_lambda, betas)
            self.lyapunov.append(f + c * (l1 + self.box_lambda * dot))
            self.lyapunov_scales.append(abs(f) + c * (l1 + self.box_lambda * abs(dot)))

        def step(self, closure: Any = None) -> Any:
            loss = None
            if closure is not None:  # torch's convention: the closure re-evaluates f at x_t
                with torch.enable_grad():
                    loss = closure()
                self._pending_loss = float(loss)
            if self._pending_loss is not None:
                self._record_lyapunov(self._pending_loss)
                self._pending_loss = None
            self.lrs.append(float(self.param_groups[0]["lr"]))
            super().step()
            self.inf_norms.append(self._inf_norm())
            return loss

        def run_metrics(self) -> dict[str, float]:
            out = box_metrics(self.inf_norms, self.box_lambda, self.lrs)
            if self.lyapunov:
                out.update(lyapunov_metrics(self.lyapunov, self.lyapunov_scales))
            return out

    return LionK()

"""XGrad (Guan et al. 2023, arXiv:2305.18240): gradients taken at predicted future weights.

Before each forward pass the weights are moved s steps ahead along the optimizer's *current*
update direction, built from its existing state, and the minibatch gradient is computed there:

    theta_hat = theta_t - s * lr * Delta_t,
    SGD with momentum:  Delta_t = v_t (the momentum buffer),
    Adam / AdamW:       Delta_t = m_hat_t / (sqrt(v_hat_t) + eps)
                        (m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t)),
    g_t = grad f(theta_hat; batch_t),  then theta_t is restored and the base step uses g_t.

Usage: ``opt.pre_forward()`` before the forward pass (the runner calls it when the optimizer has
one), ``loss.backward()``, ``opt.step()``; ``step`` restores theta_t before the base update.

Choices, as in the authors' ``SGD.py``, ``Adam.py``, ``AdamW.py`` (guanleics/XGrad) unless said:

* on the first step there is no optimizer state, so there is no prediction;
* the prediction leaves weight decay out (also AdamW's decoupled decay);
* the base update is torch's own SGD / Adam / AdamW, unchanged (the classes subclass them), so with
  ``steps_ahead=0`` the iterates equal the base optimizer's bit for bit;
* Adam with ``amsgrad=True`` predicts with the running maximum of v, the denominator its step uses;
* the authors' prediction uses the lr of the previous step; here the lr the runner has just set
  for this step (identical under a constant lr).
"""
from __future__ import annotations

import math
from typing import Any

import torch


class _WeightPrediction:
    """Mixin: ``pre_forward`` loads the predicted weights, ``step`` restores and steps."""

    steps_ahead: float
    _saved: list[tuple[torch.Tensor, torch.Tensor]]

    def _direction(self, group: dict[str, Any], state: dict[str, Any]) -> torch.Tensor | None:
        raise NotImplementedError

    @torch.no_grad()
    def pre_forward(self) -> None:
        """theta <- theta - s * lr * Delta (saving theta); a no-op before the first step."""
        self.restore()
        for group in self.param_groups:  # type: ignore[attr-defined]
            for p in group["params"]:
                state = self.state.get(p)  # type: ignore[attr-defined]
                direction = self._direction(group, state) if state else None
                if direction is None:
                    continue
                self._saved.append((p, p.detach().clone()))
                p.add_(direction, alpha=-self.steps_ahead * float(group["lr"]))

    @torch.no_grad()
    def restore(self) -> None:
        """Put the saved weights back (the gradient stays the one taken at the prediction)."""
        for p, saved in self._saved:
            p.copy_(saved)
        self._saved = []

    def step(self, closure: Any = None) -> Any:
        self.restore()
        return super().step(closure)  # type: ignore[misc]


class XGradSGD(_WeightPrediction, torch.optim.SGD):
    """SGD with heavy-ball momentum (default 0.9) and weight prediction along the momentum buffer."""

    def __init__(self, params: Any, lr: float = 1e-2, momentum: float = 0.9, steps_ahead: float = 1.0,
                 **kw: Any) -> None:
        super().__init__(params, lr=lr, momentum=momentum, **kw)
        self.steps_ahead, self._saved = float(steps_ahead), []

    def _direction(self, group: dict[str, Any], state: dict[str, Any]) -> torch.Tensor | None:
        return state.get("momentum_buffer")


class _AdamPrediction(_WeightPrediction):
    def _direction(self, group: dict[str, Any], state: dict[str, Any]) -> torch.Tensor | None:
        if "exp_avg" not in state:
            return None
        beta1, beta2 = group["betas"]
        t = float(state["step"])
        second = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        denom = second.sqrt() / math.sqrt(1 - beta2 ** t) + group["eps"]
        return state["exp_avg"] / (1 - beta1 ** t) / denom


class XGradAdam(_AdamPrediction, torch.optim.Adam):
    """Adam (L2 weight decay, as torch.optim.Adam) with weight prediction."""

    def __init__(self, params: Any, lr: float = 1e-3, steps_ahead: float = 1.0, **kw: Any) -> None:
        super().__init__(params, lr=lr, **kw)
        self.steps_ahead, self._saved = float(steps_ahead), []


class XGradAdamW(_AdamPrediction, torch.optim.AdamW):
    """AdamW (decoupled weight decay, torch's default 0.01) with weight prediction."""

    def __init__(self, params: Any, lr: float = 1e-3, steps_ahead: float = 1.0, **kw: Any) -> None:
        super().__init__(params, lr=lr, **kw)
        self.steps_ahead, self._saved = float(steps_ahead), []

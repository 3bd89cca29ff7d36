"""MKOR (Mozaffari, Li, Zhang & Mehri Dehnavi, NeurIPS 2023): K-FAC-style preconditioning whose
inverse Kronecker factors are updated directly by rank-1 Sherman-Morrison steps with momentum.

For a Linear layer y = W a (+ b, folded in as a constant input 1), K-FAC preconditions the weight
gradient grad W (out x in) as  Delta W = R^{-1} grad W L^{-1}  with factors L ~ E[a a^T] (inputs)
and R ~ E[g g^T] (gradients w.r.t. the outputs). MKOR replaces each factor by a rank-1 momentum
estimate built from the batch means l = mean_b a_b and r = mean_b (n g_b) (n g_b is the gradient
of sample b's own loss, since the loss averages over the batch):

    L_t = gamma L_{t-1} + (1 - gamma) l l^T,

and keeps only the inverse, updated exactly by Sherman-Morrison in O(d^2) instead of O(d^3):

    L_t^{-1} = L_{t-1}^{-1} / gamma
               - (1 - gamma) / gamma^2 * L_{t-1}^{-1} l l^T L_{t-1}^{-1} / (1 + (1 - gamma)/gamma * l^T L_{t-1}^{-1} l).

Stabilisers (as in the official code, Mohammad-Mozaffari/mkor ``mkor/mkor.py``):

* norm-based stabiliser: when any entry of a layer's inverse factor exceeds ``reset_threshold``
  (2), both of its factors are reset at their next update, P <- (1 - zeta) P + zeta I with
  ``stabilization_factor`` zeta = 0.1, instead of the rank-1 update;
* gradient rescaling: each layer's preconditioned gradient is scaled back to the norm of its raw
  gradient (||grad W|| + ||grad b||), then a base optimizer (SGD with momentum, or Adam) steps;
* factors are updated every ``inv_freq`` (10) steps, preconditioning is applied every step;
  activations and output gradients are clamped to +-``clipping_value`` (100).

Choices and deviations (say so when reading results):

* ``inverse_update="paper"`` (default) is the exact Sherman-Morrison of the momentum update above.
  The official code instead applies an unscaled Sherman-Morrison to a blend of the inverse with the
  identity, P <- SM(0.95 P + 0.05 I, v); ``inverse_update="code"`` reproduces that;
* the factors start at the identity and, as in the official code, the first factor update resets
  them (to the identity) instead of using its vectors;
* only ``nn.Linear`` layers are preconditioned (the official code also handles Conv2d); every other
  parameter (norm layers, embeddings, a bare tensor) gets the base optimizer's plain step;
* float32 throughout (the official default ``half_precision=True`` targets GPUs), single worker
  (no rank-1 all-reduce), no MKOR-H switch to first order, no warm-up, no gradient accumulation.

Finding the layers: the official constructor takes the model. Here the runner builds optimizers
from parameters only, so by default MKOR registers one *global* module forward hook
(``torch.nn.modules.module.register_module_forward_hook``) that reacts only to ``nn.Linear``
modules whose weight is one of this optimizer's parameters, and only while autograd records
(evaluation under ``no_grad`` is ignored). It stores l and registers a tensor hook on the output
that stores r during backward. The hook is removed by :meth:`MKOR.close` or when the optimizer is
garbage-collected. Passing ``modules=`` hooks those modules directly instead.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn as nn


def sherman_morrison(inv: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(A + v v^T)^{-1} from A^{-1} (symmetric A)."""
    pv = inv @ v
    return inv - torch.outer(pv, pv) / (1.0 + v @ pv)


def momentum_sm_update(inv: torch.Tensor, v: torch.Tensor, gamma: float) -> torch.Tensor:
    """(gamma A + (1 - gamma) v v^T)^{-1} from A^{-1}: Sherman-Morrison on the momentum update.

    gamma A + (1 - gamma) v v^T = gamma (A + c v v^T) with c = (1 - gamma) / gamma, so the inverse is
    SM(A^{-1}, sqrt(c) v) / gamma.
    """
    return sherman_morrison(inv, v * ((1.0 - gamma) / gamma) ** 0.5) / gamma


def code_sm_update(inv: torch.Tensor, v: torch.Tensor, blend: float = 0.95) -> torch.Tensor:
    """The official code's update: SM(blend P + (1 - blend) I, v)."""
    eye = torch.eye(inv.shape[0], dtype=inv.dtype, device=inv.device)
    return sherman_morrison(blend * inv + (1.0 - blend) * eye, v)


@dataclass
class _Layer:
    """Statistics and inverse factors of one Linear layer."""

    module: nn.Linear
    a_inv: torch.Tensor  # L^{-1}, (in [+1]) x (in [+1])
    g_inv: torch.Tensor  # R^{-1}, out x out
    a_mean: torch.Tensor | None = None
    g_mean: torch.Tensor | None = None
    reset: bool = True  # the first update resets, as in the official code
    handles: list[Any] = field(default_factory=list)


class MKOR(torch.optim.Optimizer):
    """MKOR over a base optimizer; see the module docstring for the update."""

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 base: str = "sgd", stat_decay: float = 0.95, inv_freq: int = 10,
                 stabilization_factor: float = 0.1, reset_threshold: float = 2.0, clipping_value: float = 100.0,
                 inverse_update: str = "paper", modules: Iterable[nn.Module] | None = None,
                 betas: tuple[float, float] = (0.9, 0.999)) -> None:
        super().__init__(params, dict(lr=lr))
        if inverse_update not in ("paper", "code"):
            raise ValueError(f"inverse_update must be 'paper' or 'code', not {inverse_update!r}")
        if base == "sgd":
            self.base = torch.optim.SGD(self.param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
        elif base == "adam":
            self.base = torch.optim.Adam(self.param_groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        else:
            raise ValueError(f"MKOR base must be 'sgd' or 'adam', not {base!r}")
        self.param_groups = self.base.param_groups  # one set of groups: the runner's lr reaches the base
        self.gamma, self.inv_freq, self.zeta = float(stat_decay), int(inv_freq), float(stabilization_factor)
        self.reset_threshold, self.clip, self.inverse_update = float(reset_threshold), float(clipping_value), inverse_update
        self.steps = 0
        self.layers: dict[int, _Layer] = {}  # id(weight) -> layer, filled as Linear modules are seen
        self._weights = {id(p) for group in self.param_groups for p in group["params"]}
        self._global_handle: Any = None
        me = weakref.ref(self)  # hooks must not keep the optimizer alive

        def forward_hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            opt = me()
            if opt is not None:
                opt._record(module, inputs, output)

        if modules is None:
            self._global_handle = nn.modules.module.register_module_forward_hook(forward_hook)
        else:
            for module in modules:
                if isinstance(module, nn.Linear) and id(module.weight) in self._weights:
                    self._layer(module).handles.append(module.register_forward_hook(forward_hook))

    # ------------------------------------------------------------------ statistics
    def _layer(self, module: nn.Linear) -> _Layer:
        layer = self.layers.get(id(module.weight))
        if layer is None:
            w = module.weight
            n_in = w.shape[1] + (module.bias is not None)
            layer = _Layer(module, torch.eye(n_in, dtype=w.dtype, device=w.device),
                           torch.eye(w.shape[0], dtype=w.dtype, device=w.device))
            self.layers[id(w)] = layer
        return layer

    def _record(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        """l = batch mean of the (bias-augmented) input; r, in backward, = batch sum of dL/dy."""
        if not (isinstance(module, nn.Linear) and id(module.weight) in self._weights and torch.is_grad_enabled()):
            return
        layer = self._layer(module)
        with torch.no_grad():
            a = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
            if module.bias is not None:
                a = torch.cat([a, a.new_ones(a.shape[0], 1)], 1)
            layer.a_mean = a.mean(0).clamp(-self.clip, self.clip)
        if output.requires_grad:
            clip = self.clip  # the closure lives in the graph: it must not hold the optimizer

            def grad_hook(grad: torch.Tensor) -> None:
                g = grad.detach().reshape(-1, grad.shape[-1])
                # n * mean_b g_b: per-sample-loss output gradients averaged over the batch
                layer.g_mean = (g.shape[0] * g).mean(0).clamp(-clip, clip)

            output.register_hook(grad_hook)

    def _update_inverse(self, inv: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.inverse_update == "paper":
            return momentum_sm_update(inv, v, self.gamma)
        return code_sm_update(inv, v)

    def _update_factors(self, layer: _Layer) -> None:
        if layer.a_mean is None or layer.g_mean is None:
            return  # no recorded pass yet
        if layer.reset:
            eye_a = torch.eye(layer.a_inv.shape[0], dtype=layer.a_inv.dtype, device=layer.a_inv.device)
            eye_g = torch.eye(layer.g_inv.shape[0], dtype=layer.g_inv.dtype, device=layer.g_inv.device)
            layer.a_inv = (1 - self.zeta) * layer.a_inv + self.zeta * eye_a
            layer.g_inv = (1 - self.zeta) * layer.g_inv + self.zeta * eye_g
            layer.reset = False
            return
        layer.a_inv = self._update_inverse(layer.a_inv, layer.a_mean.to(layer.a_inv.dtype))
        layer.g_inv = self._update_inverse(layer.g_inv, layer.g_mean.to(layer.g_inv.dtype))
        # norm-based stabiliser: an exploding entry resets both factors at the next update
        layer.reset = bool(max(layer.a_inv.abs().max(), layer.g_inv.abs().max()) > self.reset_threshold)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def _precondition(self, layer: _Layer) -> None:
        module = layer.module
        if module.weight.grad is None:
            return
        grads = [module.weight.grad] + ([module.bias.grad] if module.bias is not None else [])
        if any(g is None for g in grads):
            return
        mat = torch.cat([grads[0], grads[1].unsqueeze(1)], 1) if len(grads) == 2 else grads[0]
        update = layer.g_inv @ mat @ layer.a_inv
        parts = [update[:, :-1], update[:, -1]] if len(grads) == 2 else [update]
        # gradient rescaling: the preconditioned gradient keeps the raw gradient's norm
        scale = sum(g.norm() for g in grads) / sum(u.norm() for u in parts)
        if not torch.isfinite(scale):
            return  # zero or broken update: leave the raw gradient
        for g, u in zip(grads, parts):
            g.copy_(u.reshape(g.shape) * scale)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.steps % self.inv_freq == 0:
            for layer in self.layers.values():
                self._update_factors(layer)
        for layer in self.layers.values():
            self._precondition(layer)
        self.base.step()  # non-Linear parameters: the base optimizer's plain step on the raw gradient
        self.steps += 1
        return loss

    def close(self) -> None:
        """Remove the hooks (also done on garbage collection)."""
        if self._global_handle is not None:
            self._global_handle.remove()
            self._global_handle = None
        for layer in self.layers.values():
            for handle in layer.handles:
                handle.remove()
            layer.handles.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to unhook
            pass

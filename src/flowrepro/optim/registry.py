"""Optimizers by name: one :class:`OptimizerSpec` per entry of ``OPTIMIZERS``.

Every spec builds a ``torch.optim.Optimizer`` from ``(params, lr, **kw)``; extra
keyword arguments (``betas=[0.9, 0.99]`` from a YAML file, say) are passed through.
torch.optim covers SGD, Adam and AdamW (and AMSGrad with bias corrections, ``amsgrad_torch``);
``amsgrad`` is the paper's algorithm (:mod:`.amsgrad_paper`); the rest come from pytorch_optimizer,
which is imported inside ``build`` because importing it takes seconds.

``needs_create_graph`` tells the runner to call ``loss.backward(create_graph=True)``:
AdaHessian differentiates the gradient again (Hutchinson's estimate of diag H,
E_z[z * (H z)] with Rademacher z) inside its ``step``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from flowrepro.registry import OPTIMIZERS


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer, and what its ``backward`` call needs."""

    name: str
    build: Callable[..., Any]  # (params, lr, **kw) -> torch.optim.Optimizer
    needs_create_graph: bool = False
    source: str = ""


def _tuples(kw: dict[str, Any]) -> dict[str, Any]:
    """YAML gives lists; torch validates ``betas`` as a tuple."""
    return {k: tuple(v) if k == "betas" and isinstance(v, list) else v for k, v in kw.items()}


def _torch(cls_name: str, **fixed: Any) -> Callable[..., Any]:
    def build(params: Any, lr: float, **kw: Any) -> Any:
        import torch

        return getattr(torch.optim, cls_name)(params, lr=lr, **{**fixed, **_tuples(kw)})

    return build


def _pytorch_optimizer(key: str, **fixed: Any) -> Callable[..., Any]:
    def build(params: Any, lr: float, **kw: Any) -> Any:
        from pytorch_optimizer import load_optimizer  # slow import: only when used

        return load_optimizer(key)(params, lr=lr, **{**fixed, **_tuples(kw)})

    return build


def _amsgrad_paper(params: Any, lr: float, **kw: Any) -> Any:
    from flowrepro.optim.amsgrad_paper import build_amsgrad_paper

    return build_amsgrad_paper(params, lr, **kw)


def _own(module: str, name: str, **fixed: Any) -> Callable[..., Any]:
    """An optimizer written here from its paper (``flowrepro.optim.<module>.<name>``), imported when built."""
    def build(params: Any, lr: float, **kw: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(f"flowrepro.optim.{module}"), name)(params, lr=lr, **{**fixed, **_tuples(kw)})

    return build


def _lion_k(params: Any, lr: float, **kw: Any) -> Any:
    from flowrepro.optim.lion_k import build_lion_k

    return build_lion_k(params, lr, **kw)


def _register(spec: OptimizerSpec) -> OptimizerSpec:
    return OPTIMIZERS.register(spec.name)(spec)


for _spec in [
    OptimizerSpec("sgd", _torch("SGD", momentum=0.9), source="torch.optim.SGD, heavy-ball momentum 0.9"),
    OptimizerSpec("adam", _torch("Adam"), source="Kingma & Ba 2015"),
    OptimizerSpec("adamw", _torch("AdamW"), source="Loshchilov & Hutter 2019"),
    OptimizerSpec("amsgrad", lambda params, lr, **kw: _amsgrad_paper(params, lr, **_tuples(kw)),
                  source="Reddi et al. 2018, Algorithm 2 (no bias correction; flowrepro.optim.amsgrad_paper)"),
    OptimizerSpec("amsgrad_torch", _torch("Adam", amsgrad=True),
                  source="torch.optim.Adam(amsgrad=True): AMSGrad with Adam's bias corrections"),
    OptimizerSpec("adabelief", _pytorch_optimizer("adabelief"), source="Zhuang et al. 2020"),
    OptimizerSpec("diffgrad", _pytorch_optimizer("diffgrad"), source="Dubey et al. 2019"),
    OptimizerSpec("lion", _pytorch_optimizer("lion"), source="Chen et al. 2023"),
    OptimizerSpec("adan", _pytorch_optimizer("adan"), source="Xie et al. 2022"),
    OptimizerSpec("ademamix", _pytorch_optimizer("ademamix"), source="Pagliardini et al. 2024"),
    OptimizerSpec("exadam", _pytorch_optimizer("exadam"), source="Adly 2024"),
    # defaults of amirgholami/adahessian image_classification/optim_adahessian.py (Adahessian.__init__)
    OptimizerSpec("adahessian", _pytorch_optimizer("adahessian", betas=(0.9, 0.999), eps=1e-4,
                                                   weight_decay=0.0, hessian_power=1.0),
                  needs_create_graph=True, source="Yao et al. 2021; defaults of the authors' code"),
    OptimizerSpec("gravity", _pytorch_optimizer("gravity"), source="Bahrami & Zadeh 2021"),
    OptimizerSpec("grams", _pytorch_optimizer("grams"), source="Cao et al. 2024"),
    # second-order and look-ahead optimizers written from their papers (issue #22, TIER2 2.9-2.11)
    OptimizerSpec("mfac", _own("mfac", "MFAC", ngrads=32, damp=1e-4, momentum=0.9),
                  source="Frantar, Kurtic & Alistarh 2021 (dense M-FAC, m=32, damp 1e-4; flowrepro.optim.mfac)"),
    OptimizerSpec("mkor", _own("mkor", "MKOR", base="sgd", momentum=0.9),
                  source="Mozaffari et al. 2023 (MKOR, SGD-momentum base; flowrepro.optim.mkor)"),
    OptimizerSpec("xgrad_sgdm", _own("xgrad", "XGradSGD", momentum=0.9, steps_ahead=1),
                  source="Guan et al. 2023 (XGrad over SGD-momentum 0.9, s=1; flowrepro.optim.xgrad)"),
    OptimizerSpec("xgrad_adam", _own("xgrad", "XGradAdam", steps_ahead=1),
                  source="Guan et al. 2023 (XGrad over Adam, s=1; flowrepro.optim.xgrad)"),
    OptimizerSpec("xgrad_adamw", _own("xgrad", "XGradAdamW", steps_ahead=1),
                  source="Guan et al. 2023 (XGrad over AdamW, s=1; flowrepro.optim.xgrad)"),
    OptimizerSpec("lion_k", lambda params, lr, **kw: _lion_k(params, lr, **_tuples(kw)),
                  source="Chen et al. 2024 (Lion-K): Lion with decoupled weight decay, box metrics recorded"),
    OptimizerSpec("kron", _pytorch_optimizer("kron"), source="Li 2018 (PSGD Kron), pytorch_optimizer"),
    OptimizerSpec("shampoo", _pytorch_optimizer("shampoo"), source="Gupta, Koren & Singer 2018, pytorch_optimizer"),
]:
    _register(_spec)


def get_optimizer(name: str) -> OptimizerSpec:
    """The spec registered as ``name`` (KeyError listing the known names otherwise)."""
    return OPTIMIZERS.get(name)

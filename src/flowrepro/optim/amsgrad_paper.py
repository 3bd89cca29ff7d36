r"""AMSGrad as Reddi, Kale & Kumar wrote it (ICLR 2018, Algorithm 2), without bias correction.

.. math::

    m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2,

    \hat v_t = \max(\hat v_{t-1}, v_t), \qquad x_{t+1} = x_t - \alpha_t\, m_t / \sqrt{\hat v_t}

(the problem applies the projection and the schedule alpha_t = alpha / sqrt(t)). torch's
``Adam(amsgrad=True)`` divides m_t and the running max by Adam's bias corrections 1 - beta^t, which
the paper's algorithm does not: early steps then differ, and on the counterexamples so do the
iterates. ``eps`` (1e-8, inside the square root's denominator) only guards 0 / 0 when g is 0.
"""
from __future__ import annotations


def build_amsgrad_paper(params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
    import torch

    class AMSGradPaper(torch.optim.Optimizer):
        def __init__(self) -> None:
            super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

        @torch.no_grad()
        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                beta1, beta2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["m"], state["v"], state["v_max"] = (torch.zeros_like(p) for _ in range(3))
                    state["m"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                    state["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                    torch.maximum(state["v_max"], state["v"], out=state["v_max"])
                    p.addcdiv_(state["m"], state["v_max"].sqrt().add_(group["eps"]), value=-group["lr"])
            return loss

    return AMSGradPaper()

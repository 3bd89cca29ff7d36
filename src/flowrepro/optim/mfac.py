"""Dense M-FAC (Frantar, Kurtic & Alistarh, NeurIPS 2021): an inverse empirical Fisher over a
sliding window of the last m gradients, applied matrix-free.

With the window G (m x d, rows g_1..g_m) and damping lambda,

    F = lambda I + (1/m) sum_i g_i g_i^T = lambda I + G^T G / m.

Adding the gradients one at a time, F_0 = lambda I, F_k = F_{k-1} + g_k g_k^T / m, Sherman-Morrison gives

    F_k^{-1} x = F_{k-1}^{-1} x - (F_{k-1}^{-1} g_k) (g_k^T F_{k-1}^{-1} x) / (m + g_k^T F_{k-1}^{-1} g_k).

The paper's dynamic algorithm never forms a d x d matrix. With D_kj = g_k^T F_{k-1}^{-1} g_j (j >= k),
the recursion above applied to the Gram matrix G G^T / lambda is Gaussian elimination without
pivoting of (m I + G G^T / lambda), whose upper factor minus m I on the diagonal is D. Writing
F_{k-1}^{-1} g_k = sum_j B_kj g_j, B is lower triangular with B_kk = 1/lambda and

    B_k. = e_k / lambda - sum_{l<k} D_lk / (m + D_ll) B_l.,   i.e.  (I + L) B = I / lambda,
    L_kl = D_lk / (m + D_ll) (strictly lower),

and the product with any x needs only a_k = g_k^T F_{k-1}^{-1} x, which the same recursion gives
from G x as a = B G x:

    F^{-1} x = x / lambda - G^T (B^T (a / (m + diag D))).

So one product costs O(m d) (G x and G^T y) plus O(m^2); a new gradient costs one Gram row, O(m d),
and the O(m^3) elimination on the m x m Gram matrix (negligible for m <= 64). This is what the
official code (IST-DASLab/M-FAC, ``optim.py``: ``HInvFastUpMulti``, ``MFAC``) does with
``torch.lu(pivot=False)``; here the elimination is an explicit loop (``torch.linalg.lu_factor``
pivots on CPU, which breaks the order the recursion needs).

Choices, as in the official code unless said otherwise:

* the window starts as m zero gradients and the 1/m uses the full m from the first step
  (a zero row adds nothing to F), the newest gradient replaces the oldest (ring buffer), and the
  step's own gradient is in the window before F^{-1} g is taken (``update_mul``);
* weight decay is added to the gradient before it enters the window;
* momentum is an exponential average of the preconditioned direction,
  v <- mu v + (1 - mu) F^{-1} g (official ``MFAC.step``), then theta <- theta - lr v;
* all parameters are flattened into one vector (one Fisher over the whole model: memory O(m d));
* the window and the m x m algebra are float64 (the official code: float32 with TF32 off), because
  with damp 1e-4 the entries of G G^T / lambda reach 1e8 and float32 elimination gave NaN on
  Rosenbrock; the step itself is applied in the parameters' dtype;
* the default damping is 1e-5 and lr 1e-3 as in the authors' ``main_optim.py``; the sparse
  (pruning-mask) mode and multi-GPU splitting of G are not implemented.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch


class MFACInverse:
    """Products with (lambda I + G^T G / m)^{-1} for a ring buffer G of m gradients of size d."""

    def __init__(self, m: int, d: int, damp: float, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        if m < 1 or damp <= 0:
            raise ValueError(f"M-FAC needs m >= 1 and damp > 0 (got m={m}, damp={damp})")
        self.m, self.d, self.damp = m, d, float(damp)
        self.grads = torch.zeros(m, d, dtype=dtype, device=device)  # G: the window, one gradient a row
        self.gram = torch.zeros(m, m, dtype=dtype, device=device)  # G G^T, kept up to date row by row
        self.next = 0  # ring-buffer slot of the oldest gradient
        self._setup()

    def _setup(self) -> None:
        """D (upper factor of the elimination), denominators m + D_kk and the coefficients B."""
        m, lam = self.m, self.damp
        work = self.gram / lam + m * torch.eye(m, dtype=self.gram.dtype, device=self.gram.device)
        for k in range(m - 1):  # elimination without pivoting: the pivot m + D_kk is >= m > 0
            work[k + 1:, k:] -= torch.outer(work[k + 1:, k] / work[k, k], work[k, k:])
        upper = torch.triu(work)
        self.denom = torch.diagonal(upper).clone()  # m + D_kk
        # unit lower-triangular (I + L), L_kl = D_lk / (m + D_ll): both recursions are solves with it
        eye = torch.eye(m, dtype=self.gram.dtype, device=self.gram.device)
        lower = eye + (upper - torch.diag(self.denom)).t() / self.denom.unsqueeze(0)
        self.coef = torch.linalg.solve_triangular(lower, eye / lam, upper=False, unitriangular=True)  # B

    def mul(self, x: torch.Tensor, dots: torch.Tensor | None = None) -> torch.Tensor:
        """F^{-1} x in O(m d + m^2); ``dots`` = G x when the caller already has it."""
        dots = self.grads @ x if dots is None else dots
        a = self.coef @ dots  # a_k = g_k^T F_{k-1}^{-1} x = (B G x)_k
        return x / self.damp - self.grads.t() @ (self.coef.t() @ (a / self.denom))

    def update(self, g: torch.Tensor) -> torch.Tensor:
        """Replace the oldest gradient by ``g``; returns G g (the new Gram row)."""
        slot = self.next
        self.grads[slot] = g
        row = self.grads @ g
        self.gram[slot, :] = row
        self.gram[:, slot] = row
        self._setup()
        self.next = (slot + 1) % self.m
        return row

    def update_mul(self, g: torch.Tensor) -> torch.Tensor:
        """Add ``g`` to the window, then return F^{-1} g (the official ``update_mul``)."""
        return self.mul(g, self.update(g))

    def dense(self) -> torch.Tensor:
        """The d x d matrix F itself (tests and small d only)."""
        eye = torch.eye(self.d, dtype=self.grads.dtype, device=self.grads.device)
        return self.damp * eye + self.grads.t() @ self.grads / self.m


class MFAC(torch.optim.Optimizer):
    """theta <- theta - lr * v,  v <- mu v + (1 - mu) F^{-1} (g + wd theta), F over the last m gradients."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0, ngrads: int = 32, damp: float = 1e-5) -> None:
        super().__init__(params, dict(lr=lr))
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        flat = [p for group in self.param_groups for p in group["params"]]
        d = sum(p.numel() for p in flat)
        # float64 inside: with damp 1e-4 the Gram/lambda entries reach 1e8 and float32 elimination
        # loses the small pivots (NaN on Rosenbrock); the official code runs float32 with TF32 off
        self.hinv = MFACInverse(int(ngrads), d, damp, dtype=torch.float64, device=flat[0].device)
        self.velocity = torch.zeros(d, dtype=flat[0].dtype, device=flat[0].device)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"]]
        # a parameter without a gradient contributes a zero block (keeps the flat layout fixed)
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        if self.weight_decay:
            g = g + self.weight_decay * torch.cat([p.reshape(-1) for p in params])
        direction = self.hinv.update_mul(g.to(torch.float64)).to(self.velocity.dtype)
        if self.momentum > 0:
            self.velocity.mul_(self.momentum).add_(direction, alpha=1 - self.momentum)
            direction = self.velocity
        offset = 0
        for group in self.param_groups:
            for p in group["params"]:
                n = p.numel()
                p.add_(direction[offset:offset + n].view_as(p), alpha=-group["lr"])
                offset += n
        return loss

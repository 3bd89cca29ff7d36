r"""Verdicts with their uncertainty: pass, fail or inconclusive from per-seed margins.

A comparison ``L < R`` (or ``>``, ``<=``, ``>=``) is evaluated once per seed, its two sides paired
on the same seed (the same noise, data order and initialisation), giving margins
:math:`m_s = R_s - L_s` (``<``) or :math:`L_s - R_s` (``>``): positive where the claim holds.
With n seeds, mean :math:`\bar m` and standard deviation :math:`s`, the one-sided Student-t bounds

.. math::  \bar m \pm t_{c,\,n-1}\, s / \sqrt{n}

decide: ``pass`` when the lower bound is above 0, ``fail`` when the upper bound is below 0,
``inconclusive`` otherwise (the interval straddles 0: seed noise decides). Each side is a 95%
one-sided bound by default, so a verdict of pass (or of fail) is wrong at most 5% of the time
when the seeds' margins are roughly normal; the t quantile (2.92 at 3 seeds) rather than a normal
one, because a handful of seeds estimates its own spread poorly, and paired seeds because the
seed-to-seed spread of both sides is shared and cancels in the margin. A comparison with one
value per side (a deterministic problem, or one seed) is ``pass``/``fail`` as it stands; margins
with no spread decide by their sign (0: as the operator says, ``<=`` holds, ``<`` does not).
Several comparisons joined by ``and``: ``fail`` if any fails, ``pass`` if all pass, else
``inconclusive``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

#: One-sided confidence of each bound (see the module docstring for the choice).
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Verdict:
    status: str            # pass, fail or inconclusive
    margin: float          # mean margin over seeds (positive: the claim holds)
    half_width: float      # t_{c, n-1} s / sqrt(n); 0 for one value
    agree: int             # seeds whose margin says the claim holds
    n: int                 # seeds (1: deterministic)


def margins(op: str, left: list[float], right: list[float]) -> list[float]:
    """Per-seed margins of ``left op right``: positive where it holds."""
    return [r - l for l, r in zip(left, right)] if op in ("<", "<=") else [l - r for l, r in zip(left, right)]


def decide(op: str, values: list[float], confidence: float = CONFIDENCE) -> Verdict:
    """The verdict on one comparison from its per-seed margins ``values``."""
    n = len(values)
    mean = sum(values) / n
    holds = [m > 0 or (m == 0 and op in ("<=", ">=")) for m in values]
    if n == 1:
        return Verdict("pass" if holds[0] else "fail", mean, 0.0, int(holds[0]), 1)
    spread = math.sqrt(sum((m - mean) ** 2 for m in values) / (n - 1))
    if not math.isfinite(mean) or not math.isfinite(spread):
        return Verdict("inconclusive", mean, math.inf, sum(holds), n)
    if spread == 0:
        return Verdict("pass" if holds[0] else "fail", mean, 0.0, sum(holds), n)
    from scipy.stats import t

    half = float(t.ppf(confidence, n - 1)) * spread / math.sqrt(n)
    status = "pass" if mean - half > 0 else "fail" if mean + half < 0 else "inconclusive"
    return Verdict(status, mean, half, sum(holds), n)


def combine(statuses: list[str]) -> str:
    """The verdict on comparisons joined by ``and``."""
    if "fail" in statuses:
        return "fail"
    return "pass" if all(s == "pass" for s in statuses) else "inconclusive"

"""A paper's own numbers, tied to the metric rows they correspond to and judged at a matching scale.

Each entry of an experiment's ``paper_numbers:`` gives the paper's ``value`` (theirs), the ``metric``
it corresponds to in the claims grammar (:func:`flowrepro.claims.parse_expression`: usually one ref,
``fid_inception[method=vp_eps, dataset=images, sampler=dopri5_images, schedule=adaptive_rtol1e-05]``,
or arithmetic over refs, ``100 * (test_accuracy[...] - test_accuracy[...])``; ``null`` where no row
of ours corresponds), the scale or scales (``scale``) at which our number is comparable, and a relative
``tolerance`` with its reason. The rows are selected as a claim's are (``dataset=images`` through
the scale's roles), the expression is evaluated once per seed (its refs paired on the seed), and
with ours = the mean m over the n seeds (spread: their standard deviation s):

    reproduced             |m - theirs| <= tolerance * |theirs|     (at a scale in ``scale``)
    not reproduced         otherwise                                 (at a scale in ``scale``)
    no rows                a ref matches nothing                     (at a scale in ``scale``)
    not comparable         any other scale (tiny, small, smoke): ours is shown when the rows exist,
                           for reference, and judged never
    no corresponding row   ``metric: null``, at every scale

and the ratio m / theirs wherever the number is judged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from flowrepro.claims import ClaimSyntaxError, MissingRows, paired_values, parse_expression, refs_of, select

#: The verdicts, in the order a summary counts them.
VERDICTS = ("reproduced", "not reproduced", "no rows", "not comparable", "no corresponding row")


@dataclass(frozen=True)
class PaperNumber:
    """One ``paper_numbers:`` entry of an experiment (validated by the experiment schema)."""

    name: str
    value: float
    metric: str | None
    scales: tuple[str, ...]
    tolerance: float
    tolerance_reason: str
    source: str
    note: str = ""


@dataclass(frozen=True)
class Comparison:
    """A paper number next to ours at one scale: ``ours`` is the mean over ``n`` seeds (None: no rows, or
    not looked up), ``std`` their spread, ``ratio`` ours / theirs where the number is judged."""

    number: PaperNumber
    scale: str
    verdict: str
    ours: float | None = None
    std: float | None = None
    n: int = 0
    ratio: float | None = None

    @property
    def label(self) -> str:
        """The verdict as the report prints it: 'not comparable (paper scale)' says where it would be."""
        if self.verdict == "not comparable":
            return f"not comparable ({', '.join(self.number.scales)} scale)"
        return self.verdict


def entries(experiment: dict) -> list[PaperNumber]:
    """The experiment's paper numbers; a ``metric`` outside the claims grammar, or one that reads no
    metric row, is a ValueError naming the experiment and the entry."""
    numbers = []
    for name, entry in experiment.get("paper_numbers", {}).items():
        scales = entry["scale"]
        number = PaperNumber(name=name, value=float(entry["value"]), metric=entry["metric"],
                             scales=(scales,) if isinstance(scales, str) else tuple(scales),
                             tolerance=float(entry["tolerance"]), tolerance_reason=entry["tolerance_reason"],
                             source=entry["source"], note=" ".join(entry.get("note", "").split()))
        if number.metric is not None:
            try:
                node = parse_expression(number.metric)
            except ClaimSyntaxError as error:
                raise ValueError(f"{experiment['id']}: paper_numbers/{name}/metric: {error}") from None
            if not refs_of(node):
                raise ValueError(f"{experiment['id']}: paper_numbers/{name}/metric {number.metric!r} reads no metric row")
        numbers.append(number)
    return numbers


def ours(metric: str, table, roles: dict[str, str] | None = None) -> tuple[float, float, int] | None:
    """Mean, standard deviation and number of seeds of ``metric`` (an expression in the claims grammar,
    evaluated per seed) on a tidy metrics table; None when one of its refs matches no rows."""
    node = parse_expression(metric)
    try:
        for ref in refs_of(node):
            select(table, ref, roles)  # MissingRows, and names an ambiguous ref, as for a claim
    except MissingRows:
        return None
    (values,) = paired_values([node], table, roles)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std, len(values)


def compare(number: PaperNumber, table, scale: str, roles: dict[str, str] | None = None) -> Comparison:
    """``number`` against our rows at ``scale`` (the scale's name; ``roles`` its dataset roles)."""
    if number.metric is None:
        return Comparison(number, scale, "no corresponding row")
    found = ours(number.metric, table, roles)
    comparable = scale in number.scales
    if found is None:
        return Comparison(number, scale, "no rows" if comparable else "not comparable")
    mean, std, n = found
    if not comparable:  # ours for reference only: no ratio, no verdict
        return Comparison(number, scale, "not comparable", mean, std, n)
    reproduced = abs(mean - number.value) <= number.tolerance * abs(number.value)
    ratio = mean / number.value if number.value else None
    return Comparison(number, scale, "reproduced" if reproduced else "not reproduced", mean, std, n, ratio)


def compare_all(experiment: dict, table, scale: str, roles: dict[str, str] | None = None) -> list[Comparison]:
    """Every paper number of ``experiment`` against its metrics table at ``scale``."""
    comparisons = []
    for number in entries(experiment):
        try:
            comparisons.append(compare(number, table, scale, roles))
        except ValueError as error:  # an ambiguous ref is a config error: say which entry
            raise ValueError(f"{experiment['id']}: paper_numbers/{number.name}: {error}") from error
    return comparisons


def summary(comparisons: list[Comparison]) -> str:
    """One line: how many numbers got each verdict ('' when the experiment cites none)."""
    counts: dict[str, int] = {}
    for c in comparisons:
        counts[c.label] = counts.get(c.label, 0) + 1
    order = {verdict: i for i, verdict in enumerate(VERDICTS)}
    labels = sorted(counts, key=lambda label: order.get(label.split(" (")[0], len(order)))
    return ", ".join(f"{counts[label]} {label}" for label in labels)

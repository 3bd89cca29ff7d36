"""Claims as data: a tiny safe grammar over metric rows, parsed and evaluated, never ``eval``ed.

    claim    := compare ("and" compare)*
    compare  := sum ("<" | "<=" | ">" | ">=") sum
    sum      := product (("+" | "-") product)*
    product  := unary (("*" | "/") unary)*
    unary    := "-" unary | atom
    atom     := NUMBER | ref | FUNC "(" sum ("," sum)* ")" | "(" sum ")"
    ref      := METRIC "[" (KEY "=" VALUE ("," KEY "=" VALUE)*)? "]"

FUNC is one of abs, min, max, log. A ``ref`` selects the rows of the tidy table whose
``metric`` is METRIC and whose columns match every KEY=VALUE; it must pick at most one row per
seed, and its value is the mean over seeds. Example::

    w2[method=rf2, sampler=euler, nfe=1] < 0.5 * w2[method=rf1, sampler=euler, nfe=1]

A claim whose refs match no rows is ``not-run``. Otherwise it is evaluated once per seed, its
sides paired on the seed, and :mod:`flowrepro.verdicts` turns the per-seed margins into ``pass``,
``fail`` or ``inconclusive`` (the interval on the mean margin straddles zero). A ref with a single
row (a deterministic result, or a reference value measured once) stands for every seed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

TOKEN = re.compile(r"""\s*(?:
    (?P<number>\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)
  | (?P<string>"[^"]*"|'[^']*')
  | (?P<op><=|>=|<|>|[-+*/()\[\],=])
)""", re.VERBOSE)
def _log(x: float) -> float:
    """log that answers -inf at 0 and nan below, instead of raising (a claim's value, not an error)."""
    return math.log(x) if x > 0 else -math.inf if x == 0 else math.nan


FUNCTIONS = {"abs": abs, "min": min, "max": max, "log": _log}
COMPARISONS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
SELECTABLE = {"experiment", "dataset", "method", "optimizer", "sampler", "schedule", "nfe", "seed", "scale"}
MAX_LENGTH = 1000
MAX_NESTING = 64  # parentheses, calls and unary minus: deeper claims are refused, not a RecursionError


class ClaimSyntaxError(ValueError):
    """The claim expression is not in the grammar."""


class MissingRows(LookupError):
    """A ref matched no rows: the experiment did not produce what the claim needs."""


@dataclass(frozen=True)
class Ref:
    metric: str
    filters: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        return f"{self.metric}[{', '.join(f'{k}={v}' for k, v in self.filters)}]"


def tokenize(text: str) -> list[tuple[str, str]]:
    if len(text) > MAX_LENGTH:
        raise ClaimSyntaxError(f"claim is longer than {MAX_LENGTH} characters")
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ClaimSyntaxError(f"unexpected character {text[position:position + 1]!r} at {position} in {text!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class Parser:
    """Recursive descent over the tokens; builds a small tuple AST."""

    def __init__(self, text: str) -> None:
        self.text, self.tokens, self.i, self.depth = text, tokenize(text), 0, 0

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ClaimSyntaxError(f"claim nests deeper than {MAX_NESTING} levels")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        token = self.peek()
        if token is None or (value is not None and token[1] != value) or (kind is not None and token[0] != kind):
            want = value or kind
            got = token[1] if token else "end of claim"
            raise ClaimSyntaxError(f"expected {want!r} but found {got!r} in {self.text!r}")
        self.i += 1
        return token[1]

    def parse(self):
        comparisons = [self.compare()]
        while self.peek() == ("name", "and"):
            self.take("and")
            comparisons.append(self.compare())
        if self.peek() is not None:
            raise ClaimSyntaxError(f"unexpected {self.peek()[1]!r} after a complete claim in {self.text!r}")
        return comparisons

    def compare(self):
        left = self.sum()
        token = self.peek()
        if token is None or token[1] not in COMPARISONS:
            raise ClaimSyntaxError(f"a claim must compare two sides with <, <=, > or >=: {self.text!r}")
        self.i += 1
        return (token[1], left, self.sum())

    def sum(self):
        node = self.product()
        while self.peek() and self.peek()[1] in "+-" and self.peek()[0] == "op":
            node = (self.take(), node, self.product())
        return node

    def product(self):
        node = self.unary()
        while self.peek() and self.peek()[1] in "*/" and self.peek()[0] == "op":
            node = (self.take(), node, self.unary())
        return node

    def unary(self):
        if self.peek() == ("op", "-"):
            self.take("-")
            self.nest()
            node = ("neg", self.unary())
            self.depth -= 1
            return node
        return self.atom()

    def atom(self):
        token = self.peek()
        if token is None:
            raise ClaimSyntaxError(f"claim ends too early: {self.text!r}")
        kind, value = token
        if kind == "number":
            self.i += 1
            return ("num", float(value))
        if value == "(":
            self.take("(")
            self.nest()
            node = self.sum()
            self.take(")")
            self.depth -= 1
            return node
        if kind == "name":
            self.i += 1
            following = self.peek()
            if following == ("op", "("):
                if value not in FUNCTIONS:
                    raise ClaimSyntaxError(f"unknown function {value!r}; allowed: {sorted(FUNCTIONS)}")
                self.take("(")
                self.nest()
                args = [self.sum()]
                while self.peek() == ("op", ","):
                    self.take(",")
                    args.append(self.sum())
                self.take(")")
                self.depth -= 1
                return ("call", value, args)
            if following == ("op", "["):
                return ("ref", self.ref_filters(value))
            raise ClaimSyntaxError(f"{value!r} must be followed by [filters] (a metric) or (args) (a function)")
        raise ClaimSyntaxError(f"unexpected {value!r} in {self.text!r}")

    def ref_filters(self, metric: str) -> Ref:
        self.take("[")
        filters = []
        while self.peek() != ("op", "]"):
            key = self.take(kind="name")
            if key not in SELECTABLE:
                raise ClaimSyntaxError(f"cannot select on {key!r}; columns: {sorted(SELECTABLE)}")
            self.take("=")
            token = self.peek()
            if token is None or token[0] not in ("name", "number", "string"):
                raise ClaimSyntaxError(f"{metric}[{key}=...] needs a value in {self.text!r}")
            self.i += 1
            filters.append((key, token[1].strip("'\"")))
            if self.peek() == ("op", ","):
                self.take(",")
        self.take("]")
        return Ref(metric, tuple(filters))


def parse_claim(text: str):
    """Parse ``text``; raise :class:`ClaimSyntaxError` for anything outside the grammar."""
    return Parser(text).parse()


def parse_expression(text: str):
    """Parse one side of a claim (``sum`` in the grammar: refs, numbers, arithmetic, functions), e.g. a
    paper number's ``metric``; a comparison or anything else outside the grammar is a :class:`ClaimSyntaxError`."""
    parser = Parser(text)
    node = parser.sum()
    if parser.peek() is not None:
        raise ClaimSyntaxError(f"unexpected {parser.peek()[1]!r} after a complete expression in {text!r}")
    return node


def _matches(cell: Any, wanted: str) -> bool:
    try:
        return float(cell) == float(wanted)
    except (TypeError, ValueError):
        return str(cell) == wanted


def _rows(table, ref: Ref, roles: dict[str, str] | None = None):
    """The rows of a tidy table that ``ref`` picks (a dataset role mapped through ``roles``)."""
    rows = table[table["metric"] == ref.metric]
    for key, wanted in ref.filters:
        if key == "dataset" and roles:
            wanted = roles.get(wanted, wanted)
        rows = rows[rows[key].map(lambda cell, w=wanted: _matches(cell, w)).astype(bool)]  # a list mask of [] would select columns
    return rows


def select(table, ref: Ref, roles: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Mean, std and number of seeds of the rows that ``ref`` picks from a tidy table.

    ``roles`` maps a dataset role to the scale's dataset (``dataset=images`` picks cifar10's rows at
    paper scale), so one claim serves every scale."""
    rows = _rows(table, ref, roles)
    if rows.empty:
        raise MissingRows(f"no rows for {ref}")
    if rows["seed"].duplicated().any():
        varying = [c for c in ("dataset", "method", "optimizer", "sampler", "schedule", "nfe")
                   if rows[c].nunique(dropna=False) > 1]
        raise ValueError(f"{ref} is ambiguous: several rows per seed; add filters on {varying}")
    values = rows["value"].astype(float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values)


def _per_seed(table, ref: Ref, roles: dict | None) -> dict:
    """seed -> value of the rows ``ref`` picks; a single row is returned under the key None (any seed)."""
    rows = _rows(table, ref, roles)
    if len(rows) == 1:
        return {None: float(rows["value"].iloc[0])}
    return {seed: float(value) for seed, value in zip(rows["seed"], rows["value"])}


def _evaluate_seed(node, values: dict, seed) -> float:
    """``node`` with every ref's value at ``seed`` (a single-row ref, key None, at any seed)."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "ref":
        per_seed = values[str(node[1])]
        return per_seed[None] if None in per_seed else per_seed[seed]
    if kind == "neg":
        return -_evaluate_seed(node[1], values, seed)
    if kind == "call":
        return float(FUNCTIONS[node[1]](*[_evaluate_seed(a, values, seed) for a in node[2]]))
    left, right = _evaluate_seed(node[1], values, seed), _evaluate_seed(node[2], values, seed)
    return {"+": left + right, "-": left - right, "*": left * right, "/": left / right if right else math.inf}[kind]


def refs_of(node) -> list[Ref]:
    """Every metric reference in an expression tree (or a list of comparisons)."""
    if isinstance(node, list):
        return [r for op, left, right in node for r in refs_of(left) + refs_of(right)]
    if node[0] == "ref":
        return [node[1]]
    if node[0] == "call":
        return [r for a in node[2] for r in refs_of(a)]
    return [r for child in node[1:] if isinstance(child, tuple) for r in refs_of(child)]


def paired_values(nodes: list, table, roles: dict[str, str] | None = None) -> list[list[float]]:
    """Each expression of ``nodes`` evaluated on every seed that all their refs share, paired on the seed
    (a single-row ref stands for every seed; refs of single rows only give one value). Call :func:`select`
    on the refs first: it raises :class:`MissingRows` and names an ambiguous ref."""
    values = {str(ref): _per_seed(table, ref, roles) for node in nodes for ref in refs_of(node)}
    seed_sets = [set(v) for v in values.values() if None not in v]
    seeds = sorted(set.intersection(*seed_sets), key=str) if seed_sets else [None]
    if not seeds:
        raise ValueError("its sides share no seed, so they cannot be paired")
    return [[_evaluate_seed(node, values, s) for s in seeds] for node in nodes]


def check_claim(expr: str, table, roles: dict[str, str] | None = None, confidence: float | None = None,
                seeds_needed: int | None = None) -> dict[str, Any]:
    """Evaluate one claim: status, observed (left sides) and threshold (right sides) as means over seeds,
    the mean margin with its one-sided half-width, how many seeds agree, and a detail line.

    ``roles``: dataset role -> the scale's dataset (see :func:`select`). ``seeds_needed``: a claim that
    states the seeds it needs is ``inconclusive`` with fewer paired seeds."""
    from flowrepro import verdicts

    comparisons = parse_claim(expr)
    try:  # mean, std and n of every ref, in the order the claim reads them
        seen = {str(ref): select(table, ref, roles) for ref in refs_of(comparisons)}
    except MissingRows as missing:
        return {"status": "not-run", "observed": "", "threshold": "", "margin": "", "interval": "", "seeds_agree": "",
                "detail": str(missing)}
    means = {ref: {None: mean} for ref, (mean, _, _) in seen.items()}
    results = [(op, _evaluate_seed(l, means, None), _evaluate_seed(r, means, None)) for op, l, r in comparisons]
    decided = []
    for op, left, right in comparisons:
        try:
            lefts, rights = paired_values([left, right], table, roles)
        except ValueError as error:
            raise ValueError(f"{expr!r}: {error}") from None
        verdict = verdicts.decide(op, verdicts.margins(op, lefts, rights), confidence or verdicts.CONFIDENCE)
        if seeds_needed and verdict.n < seeds_needed and verdict.status != "inconclusive":
            verdict = verdicts.Verdict("inconclusive", verdict.margin, verdict.half_width, verdict.agree, verdict.n)
        decided.append(verdict)
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    detail = "; ".join(f"{ref} = {mean:.4g} ± {std:.2g} (n={n})" for ref, (mean, std, n) in seen.items())
    detail += " | " + " and ".join(f"{fmt(l)} {op} {fmt(r)}" for op, l, r in results)
    detail += " | margin " + "; ".join(f"{v.margin:.3g} ± {v.half_width:.2g}, {v.agree}/{v.n} seeds agree" for v in decided)
    if seeds_needed and min(v.n for v in decided) < seeds_needed:
        detail += f" | the claim needs {seeds_needed} seeds"
    return {"status": verdicts.combine([v.status for v in decided]),
            "observed": "; ".join(fmt(l) for _, l, _ in results),
            "threshold": "; ".join(fmt(r) for _, _, r in results),
            "margin": "; ".join(fmt(v.margin) for v in decided),
            "interval": "; ".join(f"± {v.half_width:.2g}" for v in decided),
            "seeds_agree": "; ".join(f"{v.agree}/{v.n}" for v in decided), "detail": detail}

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

A claim whose refs match no rows is ``not-run``; otherwise ``pass`` or ``fail``.
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
FUNCTIONS = {"abs": abs, "min": min, "max": max, "log": math.log}
COMPARISONS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
SELECTABLE = {"experiment", "dataset", "method", "optimizer", "sampler", "schedule", "nfe", "seed", "scale"}
MAX_LENGTH = 1000


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
        self.text, self.tokens, self.i = text, tokenize(text), 0

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
            return ("neg", self.unary())
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
            node = self.sum()
            self.take(")")
            return node
        if kind == "name":
            self.i += 1
            following = self.peek()
            if following == ("op", "("):
                if value not in FUNCTIONS:
                    raise ClaimSyntaxError(f"unknown function {value!r}; allowed: {sorted(FUNCTIONS)}")
                self.take("(")
                args = [self.sum()]
                while self.peek() == ("op", ","):
                    self.take(",")
                    args.append(self.sum())
                self.take(")")
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


def _matches(cell: Any, wanted: str) -> bool:
    try:
        return float(cell) == float(wanted)
    except (TypeError, ValueError):
        return str(cell) == wanted


def select(table, ref: Ref, roles: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Mean, std and number of seeds of the rows that ``ref`` picks from a tidy table.

    ``roles`` maps a dataset role to the scale's dataset (``dataset=images`` picks cifar10's rows at
    paper scale), so one claim serves every scale."""
    rows = table[table["metric"] == ref.metric]
    for key, wanted in ref.filters:
        if key == "dataset" and roles:
            wanted = roles.get(wanted, wanted)
        rows = rows[rows[key].map(lambda cell, w=wanted: _matches(cell, w)).astype(bool)]  # a list mask of [] would select columns
    if rows.empty:
        raise MissingRows(f"no rows for {ref}")
    if rows["seed"].duplicated().any():
        varying = [c for c in ("dataset", "method", "optimizer", "sampler", "schedule", "nfe")
                   if rows[c].nunique(dropna=False) > 1]
        raise ValueError(f"{ref} is ambiguous: several rows per seed; add filters on {varying}")
    values = rows["value"].astype(float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values)


def _evaluate(node, table, seen: dict[str, tuple[float, float, int]], roles: dict | None = None) -> float:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "ref":
        seen[str(node[1])] = select(table, node[1], roles)
        return seen[str(node[1])][0]
    if kind == "neg":
        return -_evaluate(node[1], table, seen, roles)
    if kind == "call":
        return float(FUNCTIONS[node[1]](*[_evaluate(a, table, seen, roles) for a in node[2]]))
    left, right = _evaluate(node[1], table, seen, roles), _evaluate(node[2], table, seen, roles)
    return {"+": left + right, "-": left - right, "*": left * right, "/": left / right if right else math.inf}[kind]


def check_claim(expr: str, table, roles: dict[str, str] | None = None) -> dict[str, Any]:
    """Evaluate one claim: status, observed (left sides), threshold (right sides), detail.
    ``roles``: dataset role -> the scale's dataset (see :func:`select`)."""
    comparisons = parse_claim(expr)
    seen: dict[str, tuple[float, float, int]] = {}
    try:
        results = [(op, _evaluate(l, table, seen, roles), _evaluate(r, table, seen, roles)) for op, l, r in comparisons]
    except MissingRows as missing:
        return {"status": "not-run", "observed": "", "threshold": "", "detail": str(missing)}
    passed = all(COMPARISONS[op](l, r) for op, l, r in results)
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    detail = "; ".join(f"{ref} = {mean:.4g} ± {std:.2g} (n={n})" for ref, (mean, std, n) in seen.items())
    detail += " | " + " and ".join(f"{fmt(l)} {op} {fmt(r)}" for op, l, r in results)
    return {"status": "pass" if passed else "fail",
            "observed": "; ".join(fmt(l) for _, l, _ in results),
            "threshold": "; ".join(fmt(r) for _, _, r in results), "detail": detail}

"""Fuzzing kept in the suite: the claim grammar and the experiment and scale schemas take anything a
user (or a pulled file) can write and answer with a result or a named error, never another exception,
and never run code (plugins, which are code by design, are left out of the generated experiments)."""
import builtins
import contextlib
import string

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from flowrepro.claims import ClaimSyntaxError, check_claim
from flowrepro.config import ConfigError, load_experiment, load_scale

CASES = settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
#: The schema cases load and validate YAML (about 7 ms each): 3,000 a schema keeps CI's budget.
SCHEMA_CASES = settings(max_examples=3_000, deadline=None, suppress_health_check=list(HealthCheck))
TABLE = pd.DataFrame([{"experiment": "x", "dataset": d, "method": m, "optimizer": "", "sampler": "euler", "schedule": "",
                       "nfe": n, "seed": s, "scale": "tiny", "metric": "w2", "value": 0.1 * (s + 1) * n}
                      for d in ("moons", "digits") for m in ("rf1", "rf2") for n in (1, 4) for s in range(3)])
TOKENS = ["w2", "[", "]", "method", "=", "rf1", "rf2", "nfe", "1", "4", ",", "dataset", "moons", "images", "<", "<=",
          ">", ">=", "and", "(", ")", "+", "-", "*", "/", "abs", "log", "min", "max", "0", "1e308", "-1", "seed", "'x'",
          "__import__", "os", ".", "eval", "lambda", ":", " "]


@contextlib.contextmanager
def no_eval():
    """Any call of eval/exec inside the block fails the test (hypothesis itself uses exec outside it)."""
    def refuse(*args, **kwargs):
        raise AssertionError("eval/exec called")
    saved = builtins.eval, builtins.exec
    builtins.eval, builtins.exec = refuse, refuse
    try:
        yield
    finally:
        builtins.eval, builtins.exec = saved


# Import everything the fuzzed calls import (the import system runs module code through exec).
check_claim("w2[method=rf1, nfe=1, dataset=moons] < 1.01 * w2[method=rf2, nfe=1, dataset=moons]", TABLE)
load_experiment(REPO / "config/experiments/boss_trained.yaml")
load_scale(REPO / "config/scales/tiny.yaml")


def _check(expr: str) -> None:
    try:
        with no_eval():
            result = check_claim(expr, TABLE, {"images": "digits"})
    except ClaimSyntaxError:
        return
    except ValueError as error:  # a grammatical claim the table cannot answer: ambiguous rows, unpaired sides
        assert "ambiguous" in str(error) or "share no seed" in str(error), error
        return
    assert result["status"] in {"pass", "fail", "inconclusive", "not-run"}


@pytest.mark.slow
@CASES
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join) | st.text(string.printable, max_size=200))
def test_claim_grammar_answers_or_names_the_error(expr):
    _check(expr)


def _json(max_leaves=12):
    leaves = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8)
    return st.recursive(leaves, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                        max_leaves=max_leaves)


def _maybe(valid):
    return st.one_of(valid, _json(4))


def _config_error(loader, path, data) -> str | None:
    """Write ``data`` to ``path`` and load it: None, or the ConfigError's message (any other exception fails)."""
    path.write_text(yaml.safe_dump(data))
    try:
        with no_eval():
            loader(path)
    except ConfigError as error:
        return str(error)
    return None


EXPERIMENT = st.fixed_dictionaries({"id": _maybe(st.just("fz")), "title": _maybe(st.just("t")), "source": _maybe(st.just("s")),
                                    "kind": _maybe(st.sampled_from(["flow", "sampler", "optimizer"])),
                                    "claims": _maybe(st.lists(st.fixed_dictionaries(
                                        {"id": _maybe(st.just("c")), "text": _maybe(st.just("t")),
                                         "expr": _maybe(st.just("w2[method=a] < 1"))}), max_size=2))},
                                   optional={"datasets": _maybe(st.lists(st.sampled_from(["moons", "images", "x"]), max_size=3)),
                                             "models": _maybe(st.dictionaries(st.sampled_from(["a", "b"]), st.fixed_dictionaries(
                                                 {}, optional={"path": _maybe(st.sampled_from(["linear", "vp", "nope"])),
                                                               "init": _maybe(st.sampled_from(["a", "b", "z"])),
                                                               "coupling": _maybe(st.sampled_from(["reflow", "independent"]))}),
                                                 max_size=2)),
                                             "sampling": _maybe(st.dictionaries(st.sampled_from(["euler", "heun", "zz"]),
                                                                                _maybe(st.fixed_dictionaries({"nfe": _maybe(st.just([1, 2]))})),
                                                                                max_size=2)),
                                             "recipes": _json(6), "recipes_from": _maybe(st.sampled_from(["rectified_flow", "nope"])),
                                             "reference": _json(4), "paper_numbers": _json(4), "extra": _json(3)})


@pytest.mark.slow
@SCHEMA_CASES
@given(EXPERIMENT)
def test_experiment_schema_answers_or_names_the_error(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fz.yaml"
    error = _config_error(load_experiment, path, data)
    assert error is None or str(path) in error or "fz.yaml" in error


SECTION = st.fixed_dictionaries({}, optional={k: _maybe(st.integers(1, 5000)) for k in
                                              ("n_train", "n_test", "width", "depth", "steps", "batch_size", "checkpoint_every",
                                               "reflow_pairs", "pair_steps", "n_eval", "trajectory_steps", "w2_points")}
                                | {"lr": _maybe(st.floats(1e-5, 1.0)), "network": _maybe(st.sampled_from(["unet_tiny", "x"])),
                                   "overrides": _json(4), "boss": _json(3)})
SCALE = st.fixed_dictionaries({"scale": _maybe(st.sampled_from(["tiny", "small", "paper", "smoke"])),
                               "seeds": _maybe(st.lists(st.integers(0, 5), max_size=3)), "flow2d": _maybe(SECTION)},
                              optional={"flow_images": _maybe(SECTION), "roles": _json(3), "downloads": _json(3),
                                        "seed_jobs": _maybe(st.booleans()), "recipes_of": _json(2), "extra": _json(2)})


@pytest.mark.slow
@SCHEMA_CASES
@given(SCALE)
def test_scale_schema_answers_or_names_the_error(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "scale.yaml"
    error = _config_error(load_scale, path, data)
    assert error is None or str(path) in error

"""Constant fitting (tap_edge.search.constants): a program's float literals are tuned in the sandbox for rank
agreement with the measured per-layer damage; the best constant of a program built for it is found."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tap_edge.plan.proxies.sandbox import vet_source
from tap_edge.search.constants import fit_constants, parametrize, substitute
from tap_edge.search.fitness import SEARCH_BITS

LIMITS = {"cpu_seconds": 10.0, "memory_mb": 512, "wall_seconds": 20.0}

#: Damage is a * b**2: the exponent's best value is 2 (the rank agreement is 1 only near it).
PROGRAM = '''import numpy as np

def proxy(layer, bits):
    # a comment that must survive
    s = layer["a"] * layer["b"] ** 0.5
    return [s * 4.0 ** (-b) for b in bits[0:len(bits)]]
'''


class KnownTask:
    """A task whose damage is a known function of two layer features."""

    def __init__(self, n: int = 40, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        a, b = np.exp(rng.uniform(-1, 1, n)), np.exp(rng.uniform(-2, 2, n))
        self.bits = list(SEARCH_BITS)
        self.layers = [{"a": float(x), "b": float(y)} for x, y in zip(a, b, strict=True)]
        self.damage = a * b ** 2

    def program_layers(self) -> list[dict]:
        return self.layers


def test_parametrize_finds_float_literals_in_functions() -> None:
    template, values, lines = parametrize(PROGRAM)
    assert values == [0.5, 4.0] and lines == [5, 6]
    vet_source(template)  # the batched program is a valid sandbox program
    assert parametrize("def proxy(layer, bits):\n    return [1 for b in bits]\n") is None  # ints are not tuned
    out = substitute(PROGRAM, [2.0, 3.0])
    assert "** 2.0" in out and "3.0 ** (-b)" in out and "# a comment that must survive" in out


def test_constant_fitting_finds_the_known_best_exponent() -> None:
    task = KnownTask()
    fit = fit_constants(PROGRAM, [task], rounds=8, **LIMITS)
    assert fit is not None and fit.improved and fit.code is not None
    assert fit.original == [0.5, 4.0]
    exponent = fit.tuned[0]
    assert 1.5 <= exponent <= 2.7, fit
    assert fit.objective_before < 0.97 and fit.objective_after >= 0.99
    assert fit.sandbox_runs == 9 and fit.evaluations == 1 + 8 * 12
    # the tuned program is ordinary source, and its own scores agree with the damage as recorded
    vet_source(fit.code)
    d = fit.to_dict()
    assert "code" not in d and d["tuned"] == fit.tuned


def test_constant_fitting_keeps_the_original_on_a_tie() -> None:
    """A program whose ranks do not depend on its constant is left as it is."""
    task = KnownTask()
    prog = 'def proxy(layer, bits):\n    s = layer["a"] * layer["b"] ** 2\n    return [s * 1.5 for b in bits]\n'
    fit = fit_constants(prog, [task], rounds=2, **LIMITS)
    assert fit is not None and not fit.improved and fit.code is None and fit.tuned == fit.original == [1.5]
    assert fit.objective_before == pytest.approx(fit.objective_after)


def test_a_failing_variant_does_not_sink_the_batch() -> None:
    """Vectors that make the program raise or return NaN count as failed; the others are still scored."""
    task = KnownTask()
    prog = ('import math\n\ndef proxy(layer, bits):\n    c = 0.5\n    if c > 1:\n        raise ValueError("x")\n'
            '    return [layer["a"] * layer["b"] ** c * 4.0 ** (-b) for b in bits]\n')
    fit = fit_constants(prog, [task], rounds=3, **LIMITS)
    assert fit is not None and fit.reason is None and fit.improved
    assert fit.tuned[0] <= 1 and math.isfinite(fit.objective_after)


TUNABLE_REPLY = """REASONING: Fisher curvature to a power times the quantization error.
```python
import numpy as np

def proxy(layer, bits):
    curv = float(np.sum(layer["fisher"])) ** 0.05
    return [curv * float(e) for e in layer["qerr"]]
```"""


def test_the_loop_tunes_constants_and_records_both(tmp_path: Path) -> None:
    """With fit_constants the run logs the original and tuned literals, scores the tuned program, and a summary
    read back from the log shows the tuned code of the best program."""
    from test_evolve import ScriptedLLM, _settings

    from tap_edge.search.llm import LLMClient, LLMConfig
    from tap_edge.search.loop import Evolution
    from tap_edge.search.runlog import read_events
    from tap_edge.search.summary import summarize

    with ScriptedLLM([TUNABLE_REPLY]) as srv:
        s = _settings(srv.base_url, seed_builtins=False, population=1, generations=1, fit_constants=True,
                      limits={"cpu_seconds": 5, "memory_mb": 512, "wall_seconds": 10})
        summary = Evolution.create(tmp_path / "run", s, LLMClient(LLMConfig(**s.llm))).run(show_progress=False)
    events = read_events(tmp_path / "run" / "events.jsonl")
    (fit,) = [e for e in events if e["type"] == "constants"]
    assert fit["original"] == [0.05] and fit["objective_after"] >= fit["objective_before"]
    best = summary.best
    assert best is not None and best.constants is not None and best.constants.original == [0.05]
    if fit["improved"]:
        assert fit["code"] and best.code == fit["code"] and repr(fit["tuned"][0]) in best.code
    assert summarize(tmp_path / "run").best.code == best.code

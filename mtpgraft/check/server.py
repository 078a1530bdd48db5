"""A llama-server process on 127.0.0.1: start, wait for health, talk HTTP, stop. Stdlib only.

Used by the tests and by `mtpgraft check`. Every wait has a timeout; a server that dies while starting
raises ServerError with the meaningful error line of its log (e.g. "failed to create MTP context").
Flags and fields are those of llama.cpp 0c1e570 (common/arg.cpp, tools/server).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import tempfile
import time
import weakref
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ServerError, ToolNotFoundError
from ..runtimes import MAINLINE, server_argv
from ..tools import (
    error_line,
    find_tool,
    probe_mtp_flag,
    probe_mtp_spec_type,
    server_help,
    spawn,
    stop_process,
)
from .watch import WATCH_SLICE, Exchange, Speed, Watchdog, exit_str

# llama-server's /metrics counters of speculative decoding (ik_llama.cpp's wrapper serves the same names).
M_DRAFT = "llamacpp:spec_decode_num_draft_tokens_total"
M_ACCEPTED = "llamacpp:spec_decode_num_accepted_tokens_total"
M_DRAFTS = "llamacpp:spec_decode_num_drafts_total"
M_PER_POS = "llamacpp:spec_decode_num_accepted_tokens_per_pos_total"

log = logging.getLogger("mtpgraft")

HOST = "127.0.0.1"
_BIND_ATTEMPTS = 3  # a free port can be taken between probing and binding; retry on a fresh one


def cpu_has_amx() -> bool:
    """Whether this (Linux) CPU advertises Intel AMX."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(deque(text.splitlines(), maxlen=n))


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name with its labels: value}; comments are skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            continue
    return out


class LlamaServer:
    """One llama-server process serving `model` on 127.0.0.1 (also a context manager).

    spec_type: None (no speculative decoding), "mtp" (the MTP spelling this build accepts, probed from
    its --help: "draft-mtp" in mainline, "mtp" in ik_llama.cpp), or any literal --spec-type value.
    draft_model: passed as -md (an MTP-only sidecar, a draft model, a gemma4 assistant).
    parallel: -np (1 by default so one request owns the server and its numbers).
    hf_repo: `OWNER/REPO[:TAG]` passed as -hf instead of -m (llama.cpp downloads it; `model` is then
    only a label); env: extra environment (MODEL_ENDPOINT, HF_HUB_CACHE) for the process.
    repack: None (default) passes --no-repack on CPUs with AMX, where llama.cpp's AMX matmul for
    repacked Q4_0/Q8_0/Q4_K/Q6_K weights segfaults (ggml-org/llama.cpp#20824; seen with 0c1e570 on
    quantized files); True keeps llama.cpp's default, False always passes --no-repack.
    """

    def __init__(self, model: str | os.PathLike[str], *, llama_cpp: str | os.PathLike[str] | None = None,
                 spec_type: str | None = None, draft_model: str | os.PathLike[str] | None = None,
                 draft_n_max: int | None = None, draft_n_min: int | None = None, ctx_size: int = 2048,
                 threads: int | None = None, extra_args: Sequence[str] = (), startup_timeout: float = 120.0,
                 log_path: str | os.PathLike[str] | None = None, metrics: bool = True,
                 parallel: int | None = 1, port: int | None = None, repack: bool | None = None,
                 hf_repo: str | None = None, env: dict[str, str] | None = None, runtime: str = MAINLINE) -> None:
        self.model = Path(model)
        self.hf_repo = hf_repo
        self.env = dict(env or {})
        self.runtime = runtime
        self.binary = find_tool("llama-server", llama_cpp, runtime)
        self.cwd: str | None = None  # the process's working directory (None: mtpgraft's)
        self.spec_type = spec_type
        self.draft_model = Path(draft_model) if draft_model is not None else None
        self.draft_n_max = draft_n_max
        self.draft_n_min = draft_n_min
        self.ctx_size = ctx_size
        self.threads = threads
        self.extra_args = [str(a) for a in extra_args]
        self.startup_timeout = startup_timeout
        self.metrics_enabled = metrics
        self.parallel = parallel
        self.repack = repack
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        if log_path is not None:
            self.log_path = Path(log_path)
        else:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            weakref.finalize(self, self.log_path.unlink, missing_ok=True)
        self._spec_flag: str | None = None
        self._speed = Speed()
        self.cmd = self._build_cmd()

    # ---- process ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def _resolve_spec_type(self) -> str | None:
        if self.spec_type is None:
            return None
        if self.spec_type != "mtp":
            return self.spec_type
        if self._spec_flag is None:
            flag = probe_mtp_spec_type(self.binary) or ("-mtp" if probe_mtp_flag(self.binary) == "-mtp" else None)
            if flag is None:
                raise ServerError(f"{self.binary} has no MTP speculative type in its --spec-type list; "
                                  "it predates MTP support: use a newer llama.cpp build")
            self._spec_flag = flag
        return self._spec_flag

    def _build_cmd(self) -> list[str]:
        source = ["-hf", self.hf_repo] if self.hf_repo else ["-m", str(self.model)]
        cmd = [str(self.binary), *source, "--host", HOST, "--port", str(self.port),
               "-c", str(self.ctx_size), "--no-webui"]
        if self.parallel is not None:
            cmd += ["-np", str(self.parallel)]
        if self.threads is not None:
            cmd += ["-t", str(self.threads)]
        if self.metrics_enabled:
            cmd.append("--metrics")
        no_repack = self.repack is False or (self.repack is None and cpu_has_amx())
        if no_repack and "--no-repack" in server_help(str(self.binary)):
            cmd.append("--no-repack")
        spec = self._resolve_spec_type()
        if spec is not None:
            cmd += [spec] if spec.startswith("-") else ["--spec-type", spec]
        if self.draft_model is not None:
            cmd += ["-md", str(self.draft_model)]
        if self.draft_n_max is not None:
            cmd += ["--spec-draft-n-max", str(self.draft_n_max)]
        if self.draft_n_min is not None:
            cmd += ["--spec-draft-n-min", str(self.draft_n_min)]
        return server_argv(self.runtime, cmd + self.extra_args)

    def start(self) -> None:
        """Start the server and wait until GET /health says ok; ServerError if it dies or times out."""
        if self.running:
            return
        for attempt in range(_BIND_ATTEMPTS):
            self._launch()
            try:
                self._wait_healthy()
                return
            except ServerError as e:
                port_lost = "couldn't bind" in e.log_tail or isinstance(e, _PortClash)
                if port_lost and not self._fixed_port and attempt + 1 < _BIND_ATTEMPTS:
                    log.info("port %d was taken; retrying on another", self.port)
                    self.port = free_port()
                    self.cmd = self._build_cmd()
                    continue
                raise

    def _launch(self) -> None:
        self.stop()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the process's life
        try:
            # The one runner: its own session (a Ctrl-C reaches us, and we stop it), and it dies with
            # mtpgraft even when mtpgraft is killed with SIGKILL.
            self._proc = spawn(self.cmd, stdout=self._log_file, text=False, cwd=self.cwd,
                               env={**os.environ, **self.env} if self.env else None)
        except ToolNotFoundError as e:
            self._close_log()
            raise ServerError(str(e)) from e
        # Never leave a server behind, even if the caller forgets stop() or the interpreter exits.
        weakref.finalize(self, stop_process, self._proc, 2.0)

    def _wait_healthy(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self._close_log()
                text = self.log_text()
                why = error_line(text)
                self._proc = None
                raise ServerError(f"llama-server exited with {exit_str(rc)} before it was ready"
                                  + (f": {why}" if why else "") + f" (log: {self.log_path})",
                                  log_tail=_tail(text))
            status = self._health_status(timeout=2.0)
            if status == 200 and self._proc.poll() is None:
                # Make sure it is our server that answered, not another one on a reused port.
                try:
                    props = self.props(timeout=10.0)
                    served = props.get("model_path")
                except ServerError:
                    props, served = {}, None  # ask again on the next round
                if served == str(self.model) or (self.hf_repo and props.get("model_alias") == self.hf_repo):
                    return
                if isinstance(served, str) and self._proc.poll() is None:
                    self.stop()
                    raise _PortClash(f"another server answers on port {self.port} (serving {served})",
                                     log_tail=_tail(self.log_text()))
            if time.monotonic() > deadline:
                text = self.log_text()
                self.stop()
                raise ServerError(f"llama-server did not become healthy within {self.startup_timeout:g}s"
                                  f" (last /health status: {status or 'no answer'}; log: {self.log_path})",
                                  log_tail=_tail(text))
            time.sleep(0.05)

    def _health_status(self, timeout: float) -> int | None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL when it is still there after `timeout` seconds
        (a server stuck "cleaning up before exit" or stopped with SIGSTOP); safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, timeout)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<LlamaServer {self.model.name} on {self.url} ({state})>"

    # ---- HTTP --------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *, timeout: float = 60.0) -> tuple[int, bytes]:
        """One HTTP exchange, watched: ServerError if the server cannot be reached, exits, or stops
        responding (its process stopped, /health unanswered, or no answer within `timeout`)."""
        ex = Exchange(HOST, self.port, method, path, body, timeout)
        ex.start()
        watch = Watchdog(lambda: self._proc, self._health_status, f"{method} {path}", timeout)
        while not ex.done.wait(WATCH_SLICE):
            why = watch.problem()
            if why is not None:
                ex.abort()
                raise ServerError(f"llama-server stopped responding: {why} (log: {self.log_path})",
                                  log_tail=_tail(self.log_text()))
        if ex.error is not None:
            dead = "" if self.running else " (the server is not running)"
            raise ServerError(f"{method} {path} on {self.url} failed: {ex.error}{dead}",
                              log_tail=_tail(self.log_text())) from ex.error
        assert ex.status is not None
        return ex.status, ex.data

    def _json(self, method: str, path: str, body: Any = None, *, timeout: float = 60.0) -> Any:
        status, raw = self.request(method, path, body, timeout=timeout)
        if status != 200:
            raise ServerError(f"{method} {path} answered HTTP {status}: {raw[:300].decode('utf-8', 'replace')}",
                              log_tail=_tail(self.log_text()))
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ServerError(f"{method} {path} answered with invalid JSON: {raw[:200]!r}") from e

    def completion(self, prompt: str, *, n_predict: int = 64, temperature: float = 0.0, seed: int = 0,
                   cache_prompt: bool = False, timeout: float | None = None, **extra: Any) -> dict:
        """POST /completion. The answer has "content" and "timings" (draft_n and draft_n_accepted
        appear in timings only when something was drafted). The wait is bounded by what the request
        needs at the speed this server has shown (see request_budget), unless `timeout` is given."""
        body = {"prompt": prompt, "n_predict": n_predict, "temperature": temperature, "seed": seed,
                "cache_prompt": cache_prompt, **extra}
        budget = timeout if timeout is not None else self.request_budget(len(prompt), n_predict)
        res = self._json("POST", "/completion", body, timeout=budget)
        self._speed.update(res.get("timings") or {})
        return res

    def request_budget(self, prompt_chars: int, n_predict: int) -> float:
        """Seconds a completion may take: the floor plus 4x what the slowest speed measured so far on
        this server needs for the prompt (counted as one token per character, an overestimate) and
        n_predict tokens; the first requests (nothing measured yet) get the startup allowance."""
        return self._speed.budget(prompt_chars, n_predict, first=self.startup_timeout)

    def chat(self, messages: Sequence[dict[str, Any]], *, n_predict: int = 64, temperature: float = 0.0,
             seed: int = 0, cache_prompt: bool = False, timeout: float = 300, **extra: Any) -> dict:
        """POST /v1/chat/completions: the messages go through the model's own template (--jinja).
        The answer has choices[0].message and the same "timings" as /completion."""
        body = {"messages": list(messages), "max_tokens": n_predict, "temperature": temperature,
                "seed": seed, "cache_prompt": cache_prompt, **extra}
        return self._json("POST", "/v1/chat/completions", body, timeout=timeout)

    def apply_template(self, messages: Sequence[dict[str, Any]], *, timeout: float = 60.0,
                       **extra: Any) -> str:
        """POST /apply-template: the prompt text the chat template renders (nothing is generated)."""
        body = {"messages": list(messages), **extra}
        return str(self._json("POST", "/apply-template", body, timeout=timeout)["prompt"])

    def detokenize(self, tokens: Sequence[int], *, timeout: float = 60.0) -> str:
        """POST /detokenize: the text of the token ids."""
        return str(self._json("POST", "/detokenize", {"tokens": list(tokens)}, timeout=timeout)["content"])

    def tokenize(self, text: str, *, timeout: float = 60.0) -> list[int]:
        """POST /tokenize: the token ids of `text` (no special tokens added)."""
        return list(self._json("POST", "/tokenize", {"content": text}, timeout=timeout)["tokens"])

    def metrics(self, *, timeout: float = 60.0) -> dict[str, float]:
        """GET /metrics parsed; keys as printed, e.g.
        'llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"}'."""
        status, raw = self.request("GET", "/metrics", timeout=timeout)
        if status != 200:
            hint = "" if self.metrics_enabled else " (started with metrics=False)"
            raise ServerError(f"GET /metrics answered HTTP {status}{hint}")
        return parse_metrics(raw.decode("utf-8", "replace"))

    def props(self, *, timeout: float = 60.0) -> dict:
        """GET /props (build_info, model_path, default_generation_settings, ...)."""
        return self._json("GET", "/props", timeout=timeout)


class _PortClash(ServerError):
    """Something else answered on our port: start() retries on another one."""

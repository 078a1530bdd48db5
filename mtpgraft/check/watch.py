"""A request watched while it runs: one HTTP exchange on a thread of its own, the watchdog that says
why a server stopped responding, and the time a request may take at the speeds a server has shown."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

WATCH_SLICE = 0.5  # how often a waiting request looks at the server
_HEALTH_EVERY = 2.0  # seconds between /health probes while a request waits
_HEALTH_MISSES = 5  # unanswered probes in a row that mean the server stopped responding
_BUDGET_FLOOR = 30.0  # no completion is given less than this many seconds
_BUDGET_FACTOR = 4.0  # headroom over the slowest speed measured


class Speed:
    """The slowest prompt and decode speeds (tokens/s) a server has shown: what a request needs."""

    def __init__(self) -> None:
        self.prefill: float | None = None
        self.decode: float | None = None

    def update(self, timings: dict[str, Any]) -> None:
        for attr, key in (("prefill", "prompt_per_second"), ("decode", "predicted_per_second")):
            v = timings.get(key)
            if isinstance(v, (int, float)) and v > 0:
                cur = getattr(self, attr)
                setattr(self, attr, v if cur is None else min(cur, v))

    def budget(self, prompt_tokens: int, n_predict: int, *, first: float) -> float:
        if self.prefill is None or self.decode is None:
            return max(first, _BUDGET_FLOOR)
        need = prompt_tokens / self.prefill + max(n_predict, 1) / self.decode
        return _BUDGET_FLOOR + _BUDGET_FACTOR * need


class Exchange(threading.Thread):
    """One HTTP request on a thread of its own, so the caller can watch the server meanwhile."""

    def __init__(self, host: str, port: int, method: str, path: str, body: Any, timeout: float) -> None:
        super().__init__(daemon=True, name=f"http {method} {path}")
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout + 5.0)
        self.method, self.path = method, path
        self.data = json.dumps(body).encode() if body is not None else None
        self.status: int | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        headers = {"Content-Type": "application/json"} if self.data is not None else {}
        try:
            self.conn.request(self.method, self.path, body=self.data, headers=headers)
            resp = self.conn.getresponse()
            self.data = resp.read()
            self.status = resp.status
        except (OSError, http.client.HTTPException) as e:
            self.error = e
        finally:
            self.conn.close()
            self.done.set()

    def abort(self) -> None:
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Watchdog:
    """Says why a server stopped responding to a request: it exited, its process is stopped, it
    stopped answering /health, or the request outlived its budget. None while all is well."""

    def __init__(self, proc: Callable[[], subprocess.Popen[bytes] | None],
                 health: Callable[..., int | None], what: str, budget: float) -> None:
        self.proc, self.health, self.what, self.budget = proc, health, what, budget
        self.t0 = time.monotonic()
        self.next_probe = self.t0 + _HEALTH_EVERY
        self.misses = 0

    def problem(self) -> str | None:
        proc = self.proc()
        now = time.monotonic()
        if proc is None or proc.poll() is not None:
            rc = proc.poll() if proc is not None else None
            return f"it exited with {exit_str(rc)} during {self.what}" if rc is not None else "it was stopped"
        if _process_state(proc.pid) in ("T", "t"):
            return f"its process (pid {proc.pid}) is stopped (SIGSTOP?) during {self.what}"
        if now - self.t0 > self.budget:
            return f"no answer to {self.what} within {self.budget:.0f}s"
        if now >= self.next_probe:
            self.next_probe = now + _HEALTH_EVERY
            self.misses = 0 if self.health(timeout=_HEALTH_EVERY) is not None else self.misses + 1
            if self.misses >= _HEALTH_MISSES:
                return f"no answer to /health for {self.misses} probes during {self.what}"
        return None


def _process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (R, S, D, T, Z, ...), or '' where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def exit_str(rc: int) -> str:
    return f"{_signal_name(-rc)} (signal {-rc})" if rc < 0 else f"exit code {rc}"

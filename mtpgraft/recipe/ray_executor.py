"""Run a recipe's steps as Ray tasks: the cluster schedules them by the CPUs and GPUs they declare.

Each step is one task that runs `step.execute_step` on a worker, exactly as the local executor
does, over a work dir every node sees (a shared filesystem): the same lock files, content keys and
state records, so a finished step is never redone and `--resume` works across executors. Tasks get
and return small values (the recipe, a step id, a StepResult); model files stay on the shared disk.

The driver keeps the dependency table: a step is submitted when what it needs has finished, a step
that failed (an error, or its worker or node died) is submitted once more, then reported failed
with its log tail while the steps that do not depend on it go on. Ctrl-C cancels the running tasks
(each removes its partial output as it stops) and waits for them before the driver exits."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import RecipeError, Setting
from ..tools import clean_up_after_interrupt, interrupt_children
from .graph import Schedule, build_steps
from .schema import Recipe
from .state import State, now_iso
from .step import Context, Step, StepResult, execute_step

PROGRESS_EVERY_S = 5.0
CANCEL_WAIT_S = 60.0


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RecipeError(Setting("executor", "ray"), " needs Ray on this machine and every node: "
                          "pip install 'mtpgraft[ray]'") from None
    return ray


def connect(address: str | None) -> Any:
    """Join the cluster at `address` (else $RAY_ADDRESS, else start a local one)."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RecipeError(f"cannot reach the Ray cluster{f' at {address}' if address else ''}: "
                              f"{str(e).splitlines()[0]}") from None
    return ray


def run_step_task(recipe: Recipe, step_id: str, token: str, llama_cpp: str | None, hub_api: Any) -> StepResult:
    """The Ray task: check the shared work dir, then run one step as the local executor would."""
    import ray

    node = ray.get_runtime_context().get_node_id()[:8]
    where = f"{socket.gethostname()} node {node} pid {os.getpid()}"
    state = State(Path(recipe.work_dir))
    if not (state.dir / f".driver-{token}").is_file():  # the driver wrote it there just before
        return StepResult(step_id, "failed", message=f"the work dir {recipe.work_dir} is not visible on "
                          f"{socket.gethostname()}: every node needs it on a shared filesystem", where=where)
    running = state.file(step_id, ".running")

    def emit(step: str, msg: str) -> None:
        with open(running, "a", encoding="utf-8") as f:
            f.write(f"{msg}\n")

    running.write_text(f"{where}\n", encoding="utf-8")
    _take_back_sigint()
    try:
        ctx = Context(recipe, llama_cpp=llama_cpp, emit=emit, hub_api=hub_api, pin_threads=True)
        return replace(execute_step(ctx, build_steps(recipe)[step_id]), where=where)
    except BaseException:
        _clean_up_after_cancel()
        raise
    finally:
        running.unlink(missing_ok=True)


def _take_back_sigint() -> None:
    """Ray cancels a task with _thread.interrupt_main(), which does nothing while SIGINT is ignored
    or default, as in every worker of a cluster started from a background job (`ray start ... &`
    ignores SIGINT, and its workers inherit that): the step would run on, and be killed with its
    partial output after CANCEL_WAIT_S. The task runs on the worker's main thread, which may set it."""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL) \
            and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _clean_up_after_cancel() -> None:
    """Ray cancels a running task by raising KeyboardInterrupt in it (interrupt_main), wherever it
    is, even inside a cleanup; do here what the CLI does after Ctrl-C: stop the task's children
    (none may go on writing) and remove every output it had not installed. The worker process
    lives on for other tasks, so children may be started again after."""
    interrupt_children(signal.SIGTERM)  # first: no thread of the step may start another child
    clean_up_after_interrupt()


class _Driver:
    def __init__(self, ctx: Context, selected: Sequence[str]) -> None:
        self.ray = require_ray()
        self.ctx, self.r = ctx, ctx.recipe
        self.sched = Schedule(self.r, selected)
        self.total = len(selected)
        self.token = uuid.uuid4().hex
        self.inflight: dict[Any, tuple[Step, int]] = {}
        self.submitted: dict[str, str] = {}  # step -> when its last attempt was submitted (UTC)
        self.task = self.ray.remote(run_step_task)
        self.base_bytes = self._bytes()
        self.last_view = ""

    def submit(self, step: Step, attempt: int) -> None:
        self.submitted[step.id] = now_iso("microseconds")
        res = step.resources()
        ref = self.task.options(num_cpus=res.cpus or 0, num_gpus=res.gpus or 0, max_retries=0,
                                name=step.id).remote(self.r, step.id, self.token, self.ctx.llama_cpp,
                                                     self.ctx.hub_api)
        self.inflight[ref] = (step, attempt)
        self.ctx.emit(step.id, ("retrying: " if attempt > 1 else "submitted: ")
                      + f"{res.cpus or 0:g} CPU" + (f", {res.gpus:g} GPU" if res.gpus else ""))

    def collect(self, ref: Any) -> None:
        step, attempt = self.inflight.pop(ref)
        try:
            res = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:  # the worker or its node died, or Ray failed it
            res = StepResult(step.id, "failed", message=f"task lost: {type(e).__name__}: "
                             f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
        if res.status == "failed" and attempt == 1:
            self.ctx.emit(step.id, f"attempt 1 failed ({res.message.splitlines()[0] if res.message else ''})")
            self.submit(step, 2)
            return
        res = replace(res, attempts=attempt)
        self.sched.finish(res)
        tail = f"\n{res.log_tail}" if res.status == "failed" and res.log_tail else ""
        self.ctx.emit(step.id, f"{res.status} on {res.where or '?'}: {res.message}{tail}")

    def run(self) -> tuple[StepResult, ...]:
        self.ctx.state.dir.mkdir(parents=True, exist_ok=True)
        marker = self.ctx.state.dir / f".driver-{self.token}"  # each task checks it sees this file
        marker.write_text(f"{socket.gethostname()} pid {os.getpid()}\n", encoding="utf-8")
        try:
            while True:
                for step in self.sched.ready():
                    self.sched.start(step)
                    self.submit(step, 1)
                if not self.inflight:
                    break
                done, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=PROGRESS_EVERY_S)
                for ref in done:
                    self.collect(ref)
                self.progress()
        except BaseException:
            self.cancel()
            raise
        finally:
            marker.unlink(missing_ok=True)
        return self.sched.ordered()

    def progress(self) -> None:
        """One line: steps done, what runs where (and its last event), bytes written so far."""
        running = []
        for step, _ in self.inflight.values():
            lines = _read_lines(self.ctx.state.file(step.id, ".running"))
            running.append(f"{step.id} on {lines[0]}" + (f" ({lines[-1]})" if len(lines) > 1 else "")
                           if lines else f"{step.id} (queued)")
        view = (f"{len(self.sched.results)}/{self.total} steps done; running: {', '.join(running) or '-'}; "
                f"{(self._bytes() - self.base_bytes) / 1e6:.1f} MB written")
        if view != self.last_view:
            self.ctx.emit("ray", view)
            self.last_view = view

    def _recorded(self, step: Step) -> bool:
        """Whether the step's running attempt has written its record: it is returning, and is left
        to finish (cancelling a task as it completes can crash Ray's core worker: "Check failed:
        it != submissible_tasks_.end()", ray-project/ray#54798)."""
        rec = self.ctx.state.get(step.id)
        return rec is not None and rec.started >= self.submitted.get(step.id, "~")

    def _bytes(self) -> int:
        return sum(p.stat().st_size for p in Path(self.r.work_dir).rglob("*") if p.is_file()) \
            if Path(self.r.work_dir).is_dir() else 0

    def _say_if_cleanup_failed(self, ref: Any) -> None:
        """A task stopped by a cancel ends cancelled; one that raised something else had its clean-up
        fail (its children or partial outputs may be left on that node): say so, with the cause."""
        try:
            self.ray.get(ref, timeout=0)
        except self.ray.exceptions.TaskCancelledError:
            pass
        except self.ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, BaseException) else e
            self.ctx.emit(self.inflight[ref][0].id, f"cancelled, but its clean-up failed: {type(cause).__name__}: "
                          f"{str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}")
        except self.ray.exceptions.RayError:
            pass  # lost with its worker: nothing ran there to fail

    def cancel(self) -> None:
        """Stop every running task (each one's cleanup removes its partial output), and wait for them."""
        refs = list(self.inflight)
        for ref, (step, _) in self.inflight.items():
            if not self._recorded(step):
                self.ray.cancel(ref, force=False)
        _, left = self.ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S) if refs else ([], [])
        for ref in set(refs) - set(left):
            self._say_if_cleanup_failed(ref)
        for ref in left:  # a task that did not stop: kill its worker (its cleanup will not run)
            self.ray.cancel(ref, force=True)
            step, _ = self.inflight[ref]
            self.ctx.state.file(step.id, ".running").unlink(missing_ok=True)
        self.inflight.clear()


def _read_lines(p: Path) -> list[str]:
    try:
        return [x for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    except OSError:
        return []


def run_on_ray(ctx: Context, selected: Sequence[str], *, address: str | None = None) -> tuple[StepResult, ...]:
    # Ray's own notices (a worker died, ...) go to stdout; a run's stdout is for its result alone
    with contextlib.redirect_stdout(sys.stderr):
        joined_here = not require_ray().is_initialized()
        ray = connect(address)
        try:
            drv = _Driver(ctx, selected)
            t0 = time.perf_counter()
            results = drv.run()
        finally:
            # Leave the cluster before the error boundary prints its line: at interpreter exit Ray's
            # core worker can print its own shutdown trace after it (seen after a Ctrl-C).
            if joined_here:
                ray.shutdown()
    ctx.emit("ray", f"{sum(r.ok for r in results)}/{len(results)} steps finished in "
                    f"{time.perf_counter() - t0:.1f}s")
    return results

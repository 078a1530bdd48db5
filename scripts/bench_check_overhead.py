#!/usr/bin/env python3
"""How much time `mtpgraft check` adds on top of llama-server's own work, from one run.

Runs execute_check once and splits its wall time into: server start (process launch to /health ok),
llama-server's own reported time (sum of prompt_ms + predicted_ms of every measured request), and
the rest (warm-up requests, HTTP and JSON, /metrics reads, stopping servers, Python). Prints the
ratios. Without MODEL it builds the tiny aligned qwen35 test model, the worst case for the ratio
(each request is a few ms of generation, so fixed per-request costs weigh the most).

    python scripts/bench_check_overhead.py                       # tiny model, full built-in suite
    python scripts/bench_check_overhead.py --server-arg='-t 1'    # one thread (busy machines)
    python scripts/bench_check_overhead.py MODEL.gguf --n-max 3 --reps 1
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

from mtpgraft.check import execute_check, plan_check, resolve_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="GGUF with MTP (default: the tiny aligned model)")
    ap.add_argument("--n-max", default="1,2,3,4")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--llama-cpp", default=None)
    ap.add_argument("--mode", default="auto", choices=["auto", "chat", "raw"],
                    help="chat: /v1/chat/completions through the template; raw: /completion")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra llama-server arguments, e.g. --server-arg='-t 1'")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="mtpgraft-bench-check-") as tmp:
        model = args.model
        if model is None:
            from mtpgraft.testmodels import build_tiny_model

            model = build_tiny_model(Path(tmp) / "tiny-aligned.gguf", head="aligned", dtype="f16")
        plan = plan_check([model], n_max=[int(x) for x in args.n_max.split(",")], reps=args.reps,
                          n_predict=args.n_predict, server=resolve_server(args.llama_cpp), mode=args.mode,
                          server_args=[x for a in args.server_arg for x in shlex.split(a)])
        r = execute_check(plan, hash_files=False)

    n_req = plan.n_requests
    n_srv = len(r.models[0].servers)
    server_work = r.server_start_s + r.generation_s
    rest = r.wall_s - server_work
    print(f"model: {Path(model).name} ({r.models[0].mode} mode); {n_srv} servers, {n_req} measured requests "
          f"({len(plan.prompts)} prompts x {plan.reps} reps x {len(plan.configs)} configs), "
          f"n_predict {plan.n_predict}; acceptance {r.acceptance}")
    print(f"execute_check wall time          {r.wall_s:8.2f} s")
    print(f"  server start (to /health)  {r.server_start_s:8.2f} s  ({r.server_start_s / n_srv * 1000:.0f} ms per server)")
    print(f"  llama-server prompt+predict{r.generation_s:8.2f} s")
    print(f"  the rest                   {rest:8.2f} s  (warm-up {r.warmup_s:.2f} s, stop "
          f"{r.server_stop_s:.2f} s, HTTP/metrics/Python {rest - r.warmup_s - r.server_stop_s:.2f} s "
          f"= {(rest - r.warmup_s - r.server_stop_s) / n_req * 1000:.1f} ms per request)")
    print(f"ratio wall / (start + llama-server time)  {r.wall_s / server_work:.3f}")
    print(f"ratio wall / llama-server time            {r.wall_s / r.generation_s:.3f}")
    print(f"harness share of wall time                {rest / r.wall_s:.1%}")


if __name__ == "__main__":
    main()

"""Recipes: a quantizer's whole job for one model in a TOML file, run as a resumable pipeline.

    recipe = load_recipe("recipes/qwen3.6-27b.toml")
    print(plan_recipe(recipe).describe())          # what would run (--dry-run)
    result = run_recipe(recipe, resume=True, on_event=print_step)

The package reads as the pipeline: `schema` parses the file, `state` records what finished (keyed by
the sha256 of settings and inputs), `steps` holds one object per stage, `pipeline` the table of
what needs what and the loop that runs it; `ray_executor` runs the same steps on a Ray cluster.

Recipe format (paths to input files are relative to the recipe file; `builtin:` names the tiny
test models and calibration text shipped with mtpgraft):

    [model]
    name = "Qwen3.6-27B"                  # output names: Name-Q4_K_M.gguf, Q8_0/Name-Q8_0-0000i-of-0000N.gguf
    base = "Qwen3.6-27B-BF16.gguf"        # the full-precision GGUF to quantize (first shard of a split set)
    mtp_from = "mtp-Qwen3.6-27B.gguf"     # optional: where the MTP block comes from (attach)
    graft_mtp_type = "keep"               # optional: attach --mtp-type (default: the base's float type)
    replace_mtp = false                   # optional: replace an MTP block the base already has

    [imatrix]                             # optional; needed for IQ1/IQ2/IQ3_XXS/IQ3_XS/Q2_K_S
    calibration = "calibration_datav3.txt"  # or: file = "existing-imatrix.gguf"
    ctx = 512
    chunks = 200
    batch = 512
    threads = 16
    extra_args = ["-ngl", "99"]

    [quantize]
    types = ["Q8_0", "Q6_K", "Q4_K_M", "IQ4_XS", "IQ2_XXS"]
    mtp_type = "q8_0"                     # q8_0 | match | a ggml type, or a table {default = "q8_0", Q2_K = "q6_k"}
    split_max_size = "50G"
    allow_requantize = false
    jobs = 1                              # types quantized at once by the local executor
    threads = 16
    out_dir = "quants"                    # relative to the work dir

    [check]                               # optional; `enabled = false` skips it
    types = ["Q4_K_M", "IQ2_XXS"]         # default: every type
    n_max = [3]
    reps = 1
    n_predict = 128
    ctx = 4096
    categories = ["code", "factual"]
    per_category = 2
    prompts = "my-prompts.jsonl"
    min_acceptance = 0.5
    min_speedup = 1.1
    server_args = ["-ngl", "99"]

    [hub]                                 # optional; no [hub], no push step
    repo = "me/Qwen3.6-27B-MTP-GGUF"
    dry_run = true
    private = false
    revision = "main"
    create_pr = false
    endpoint = "https://huggingface.co"   # optional; the token comes from $HF_TOKEN or `hf auth login`

    [run]
    work_dir = "work/qwen3.6-27b"         # relative to the CURRENT directory; default mtpgraft-work/<name>
    llama_cpp = "/opt/llama.cpp/build"    # optional
    # what each step asks a Ray cluster for (default: quantize = its threads, imatrix/check = a GPU
    # when their args offload with -ngl, else CPUs):
    resources = { quantize = { cpus = 16 }, check = { cpus = 4, gpus = 1 } }
"""

from .pipeline import (
                       PIPELINE,
                       RecipePlan,
                       RunResult,
                       StepResult,
                       describe_state,
                       plan_recipe,
                       run_recipe,
                       select_steps,
)
from .schema import Recipe, load_recipe, parse_recipe
from .state import State, StepRecord
from .steps import resolve_builtin_model, resolve_calibration

__all__ = ["PIPELINE", "Recipe", "RecipePlan", "RunResult", "State", "StepRecord", "StepResult",
           "describe_state", "load_recipe", "parse_recipe", "plan_recipe", "resolve_builtin_model",
           "resolve_calibration", "run_recipe", "select_steps"]

"""The llama.cpp runtimes mtpgraft knows: mainline llama.cpp and the ik_llama.cpp fork.

A runtime is a family of binaries (its own llama-server, llama-quantize, ...) with its own ggml type
ids, file types and server flags. Everything per runtime (the type table in ggml_types, the pinned
build in toolchain, where tools are found in tools) is keyed by these names.
"""

from __future__ import annotations

from .errors import UsageError

MAINLINE = "mainline"
IK = "ik"
RUNTIMES = (MAINLINE, IK)

# How each runtime is named to people (reports, errors, the model card).
LABELS = {MAINLINE: "llama.cpp", IK: "ik_llama.cpp"}

# Where each runtime's tools are looked for before PATH: $MTPGRAFT_LLAMA_CPP is mainline's (as
# before), $MTPGRAFT_IK_LLAMA_CPP ik's.
ENV_DIRS = {MAINLINE: "MTPGRAFT_LLAMA_CPP", IK: "MTPGRAFT_IK_LLAMA_CPP"}


# How a model card tells people to run a file only ik_llama.cpp loads: its llama-server as pinned
# spells MTP -mtp and the draft length --draft-max (newer ik: --spec-type mtp:n_max=N).
IK_CARD_SERVER = "llama-server -m {model} -mtp --draft-max {n}"


def check_runtime(name: str) -> str:
    """`name` if it is a runtime mtpgraft knows, else a UsageError naming the known ones."""
    if name not in RUNTIMES:
        raise UsageError(f"unknown runtime {name!r}: one of {', '.join(RUNTIMES)}")
    return name


# llama-server options whose spelling differs: mainline's name -> the runtime's argv for it. ik_llama.cpp
# 0.1.5 (common/common.cpp) spells the draft settings --draft-max / --draft-min / --draft-p-min and has
# --webui NAME where mainline has --no-webui. Its MTP switch (-mtp) is probed from --help instead (tools).
SERVER_SPELLING: dict[str, dict[str, tuple[str, ...]]] = {
    MAINLINE: {},
    IK: {"--spec-draft-n-max": ("--draft-max",), "--spec-draft-n-min": ("--draft-min",),
         "--spec-draft-p-min": ("--draft-p-min",), "--no-webui": ("--webui", "none")},
}


def server_argv(runtime: str, argv: list[str]) -> list[str]:
    """`argv` (a llama-server command in mainline's spelling) in `runtime`'s spelling."""
    table = SERVER_SPELLING[check_runtime(runtime)]
    return [x for a in argv for x in table.get(a, (a,))]


def server_option(runtime: str, option: str) -> str:
    """How `runtime`'s llama-server spells mainline's `option` (the name its --help lists)."""
    return SERVER_SPELLING[check_runtime(runtime)].get(option, (option,))[0]

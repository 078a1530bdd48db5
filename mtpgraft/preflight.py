"""Will llama-server run an MTP draft for this model (and this -md file)? Headers only.

`mtp_blocker` names the cases where the answer is known before a server starts, each in the words of
what llama.cpp 0c1e570 would do: a gemma4 target without its assistant, a trunk-only file that keeps
the nextn key (glm4moe & co. abort on a GGML_ASSERT), a gemma4-assistant that does not fit its target
(its layers read the target's KV cache, its input is the target's embedding), a sidecar of another
model. None means "no known blocker": the server decides.
"""

from __future__ import annotations

import os
from collections.abc import Collection

from .arch import ArchRule, rule_for
from .gguf_io import GGUFModel
from .inspection import analyse, vocab_fingerprint
from .runtimes import LABELS, MAINLINE


def mtp_blocker(model_path: str | os.PathLike[str], draft_path: str | os.PathLike[str] | None = None,
                runtime: str = MAINLINE, mtp_archs: Collection[str] | None = None) -> str | None:
    """Why `llama-server -m MODEL [-md DRAFT] --spec-type draft-mtp` cannot draft, or None. For a
    runtime other than mainline, `mtp_archs` (the architectures its build runs MTP for, None: unknown)
    also blocks a model of another architecture: ik_llama.cpp switches MTP off for it without a word."""
    model = GGUFModel(model_path)
    unrun = runtime_blocker(model, runtime, mtp_archs)
    if unrun is not None:
        return unrun
    if draft_path is None:
        return _in_file_blocker(model)
    return draft_blocker(model, GGUFModel(draft_path))


def draft_blocker(model: GGUFModel, draft: GGUFModel) -> str | None:
    """Why `draft` (an MTP-only sidecar or an assistant) cannot draft for `model`, or None: headers only."""
    if _rule(draft.arch).is_drafter:
        return assistant_blocker(model, draft)
    drafter = _rule(model.arch).drafter_arch
    if drafter is not None:
        return (f"{draft.path.name} (arch {draft.arch}) is not a {drafter}: a {model.arch} target "
                "drafts only with its assistant")
    return _same_model(model, draft)


def runtime_blocker(model: GGUFModel, runtime: str, mtp_archs: Collection[str] | None) -> str | None:
    """Why a fork's build (`mtp_archs`: the architectures it runs MTP for, None: unknown) cannot draft
    for `model`'s architecture, or None. ik_llama.cpp switches MTP off for the others without a word."""
    if runtime == MAINLINE or mtp_archs is None or model.arch in mtp_archs:
        return None
    return (f"{model.path.name} is a {model.arch}: this {LABELS[runtime]} build runs MTP for "
            f"{', '.join(mtp_archs) or 'no architecture'} only (read from the source it was built from)")


def _rule(arch: str) -> ArchRule:
    return rule_for(arch) or ArchRule(arch)


def _in_file_blocker(model: GGUFModel) -> str | None:
    arch, name = model.arch, model.path.name
    rule = rule_for(arch)
    if rule is not None and rule.has_drafter:
        return (f"{name} is a {arch} target: its MTP head is a separate {rule.drafter_arch} model; "
                "pass it with --draft ASSISTANT.gguf")
    if rule is not None and rule.is_drafter:
        return f"{name} is a {arch}: check its target with --draft {name}"
    st = analyse(model)
    if st.nextn and st.block_count and not st.eh_layers and not st.layers.get(st.block_count - st.nextn):
        if rule is not None and rule.trunk_only_ok and rule.trunk_only_mtp_aborts:
            return (f"{name} keeps {arch}.nextn_predict_layers={st.nextn} but has no MTP block: "
                    "llama-server aborts on it with --spec-type draft-mtp (GGML_ASSERT: MTP block "
                    "missing nextn.eh_proj); attach an MTP block, or detach the key")
    return None


def assistant_blocker(target: GGUFModel, asst: GGUFModel) -> str | None:
    """Why drafter `asst` (a gemma4-assistant) cannot draft for `target`, or None."""
    a, t = asst.arch, target.arch
    if t != _rule(a).target_arch:
        return f"{asst.path.name} is a {a}; its target must be a {_rule(a).target_arch} model, not {t}"
    check = _rule(a).file_problems
    problems = check(asst.get, set(asst.by_name)) if check else []
    if problems:
        return f"{asst.path.name} is not a valid {a}: {problems[0]}"
    want = {
        "embedding_length_out": (asst.get(f"{a}.embedding_length_out"), target.get(f"{t}.embedding_length"),
                                 "the target's embedding_length"),
        "attention.key_length": (asst.get(f"{a}.attention.key_length"),
                                 target.get(f"{t}.attention.key_length"), "the target's"),
        "attention.key_length_swa": (asst.get(f"{a}.attention.key_length_swa"),
                                     target.get(f"{t}.attention.key_length_swa"), "the target's"),
    }
    for key, (mine, theirs, what) in want.items():
        if mine != theirs:
            return f"{asst.path.name}: {a}.{key} is {mine}, {what} is {theirs}"
    swa = target.get(f"{t}.attention.sliding_window_pattern")
    if isinstance(swa, list) and len(swa) >= 2 and not (swa[-2] and not swa[-1]):
        return (f"{target.path.name}: the assistant's sliding layers read the target's second-to-last "
                "layer and its full layers the last one, so those must be sliding and full; the "
                f"pattern ends {swa[-2:]}")
    return _same_vocab(target, asst)


def _same_model(model: GGUFModel, draft: GGUFModel) -> str | None:
    if draft.arch != model.arch:
        return f"{draft.path.name} is {draft.arch}, the model is {model.arch}: not its MTP sidecar"
    a = model.arch
    if draft.get(f"{a}.embedding_length") != model.get(f"{a}.embedding_length"):
        return (f"{draft.path.name}: embedding_length {draft.get(f'{a}.embedding_length')} differs from "
                f"the model's {model.get(f'{a}.embedding_length')}: not its MTP sidecar")
    return _same_vocab(model, draft)


def _same_vocab(model: GGUFModel, draft: GGUFModel) -> str | None:
    (n1, h1), (n2, h2) = vocab_fingerprint(model), vocab_fingerprint(draft)
    if n1 != n2 or (h1 and h2 and h1 != h2):
        return f"{draft.path.name} has another vocabulary than {model.path.name} ({n2} vs {n1} tokens)"
    return None

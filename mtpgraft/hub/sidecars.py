"""Where MTP sidecars may go in a repo: what `llama-server -hf REPO:TAG --spec-type draft-mtp` will
pick for every quant, decided before anything is sent (naming.hf_* are llama.cpp's rules).

A sidecar (`mtp-NAME-TYPE.gguf`, MTP-only) serves the quants whose stem is NAME, or every quant when
it is the repo's only sidecar. A push is refused when llama.cpp would not find a pushed sidecar
(e.g. it sits in a sibling folder), would pick another sidecar than the intended one for a quant,
would pick between two only by the order of the Hub's file list, or when a pushed trunk-only quant
gets no sidecar at all. In-file MTP quants that would also load a sidecar get a warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .. import naming


@dataclass(frozen=True)
class Placement:
    refusals: tuple[tuple[str, str], ...]  # (path, reason)
    warnings: tuple[str, ...]
    picks: tuple[tuple[str, str | None], ...]  # (model path, the sidecar -hf :TAG loads for it)


def is_sidecar(path: str) -> bool:
    """What -hf takes as an MTP draft: a .gguf whose path contains `mtp-` (find_best_mtp)."""
    return path.endswith(".gguf") and naming.SIDECAR_PREFIX in path


def check_placement(paths: Sequence[str], *, layouts: Mapping[str, str], pushed: set[str]) -> Placement:
    """`paths`: every file of the repo after the push (sorted, as the Hub lists them); `layouts`:
    "full" / "trunk-only" / "mtp-only" for the files mtpgraft read (the pushed ones); `pushed`: the
    paths this push sends. Problems that involve only files already on the Hub are warnings."""
    paths = sorted(paths)
    sidecars = [p for p in paths if is_sidecar(p)]
    models = [p for p in paths if naming.is_hf_model_file(p) and naming.is_first_shard(p)]
    refusals: list[tuple[str, str]] = []
    warnings: list[str] = []
    picks: list[tuple[str, str | None]] = []
    for path, layout in layouts.items():
        if layout == "mtp-only" and not is_sidecar(path) and path in pushed:
            refusals.append((path, "an MTP-only file, but llama-server -hf takes a draft only from names "
                                   f"containing '{naming.SIDECAR_PREFIX}': name it "
                                   f"{naming.sidecar_name('NAME', 'TYPE')}"))
    for m in models:
        tag = (naming.hf_split_info(m) or naming.HfSplit("", "", 1, 1)).tag
        if not tag or naming.hf_find_model(paths, tag) != m:
            continue  # not reachable by its own tag (another file wins; plan_push warns about that)
        choice = naming.hf_find_sibling(paths, m, naming.SIDECAR_PREFIX, tag)
        picks.append((m, choice.path))
        mine = m in pushed or (choice.path in pushed if choice.path else False)
        _judge(m, tag, choice, layouts.get(m), _intended(m, sidecars), mine, refusals, warnings)
    picked = {s for _, s in picks}
    for s in sidecars:
        if s in pushed and s not in picked and layouts.get(s, "mtp-only") == "mtp-only":
            refusals.append((s, _unfound(s, models, picks)))
    return Placement(tuple(refusals), tuple(warnings), tuple(picks))


def _intended(model: str, sidecars: list[str]) -> list[str]:
    same = [s for s in sidecars if naming.untagged_stem(s) == naming.untagged_stem(model)]
    return same or (sidecars if len(sidecars) == 1 else [])


def _judge(m: str, tag: str, choice: naming.SiblingChoice, layout: str | None, intended: list[str],
           mine: bool, refusals: list[tuple[str, str]], warnings: list[str]) -> None:
    def problem(path: str, why: str) -> None:
        (refusals.append((path, why)) if mine else warnings.append(f"{path}: {why}"))

    if choice.path is None:
        if layout == "trunk-only":
            seen = (f" ({', '.join(choice.ignored)} is not in its folder or a parent of it: llama.cpp "
                    "never looks into sibling folders)") if choice.ignored else ""
            problem(m, f"has no MTP head and `llama-server -hf REPO:{tag} --spec-type draft-mtp` finds no "
                       f"mtp- sidecar for it{seen}; put an mtp-*.gguf in {naming.model_folder(m) or 'the repo root'}"
                       " or a parent folder")
        return
    ties = naming.tied(choice)
    if ties:
        problem(choice.path, f"for :{tag} ({m}) llama.cpp ranks it equal to {', '.join(ties)} (same folder "
                             f"depth, tag match and bit distance): the pick would depend on the Hub's file "
                             f"order; name the intended one with -{tag}. or put it in {m}'s folder")
    elif intended and choice.path not in intended:
        problem(choice.path, f"`llama-server -hf REPO:{tag}` would load it as the MTP draft of {m}, not "
                             f"{' or '.join(intended)} ({_why(choice)}); rename or move the sidecars "
                             "so the intended one wins")
    if layout == "full":
        warnings.append(f"{m} has its MTP head in the file, but `llama-server -hf REPO:{tag} --spec-type "
                        f"draft-mtp` also loads {choice.path} as a separate draft for it")


def _why(choice: naming.SiblingChoice) -> str:
    win = next(c for c in choice.candidates if c[0] == choice.path)
    _, depth, exact, diff = win
    if any(c[1] < depth for c in choice.candidates):
        return "it is in a deeper shared folder"
    if exact:
        return "its name has the exact tag"
    return f"its bit count is closest (distance {diff})"


def _unfound(s: str, models: list[str], picks: list[tuple[str, str | None]]) -> str:
    folder = naming.model_folder(s)
    reachable = [m for m in models if (naming.model_folder(m) + "/").startswith(folder + "/" if folder else "")]
    if not reachable:
        where = ", ".join(sorted({naming.model_folder(m) or "(root)" for m in models})) or "none"
        return (f"llama.cpp would not find it: {folder or 'the root'} holds no model file and is not a parent "
                f"of one (model folders: {where}); llama.cpp looks in the model's folder and its parents, "
                "never in a sibling folder")
    others = "; ".join(f"{m} -> {p}" for m, p in picks if m in reachable)
    return f"llama.cpp would never pick it: for every quant it could serve another sidecar wins ({others})"

"""ik_llama.cpp's ggml types in the one type table: files holding them parse with the sizes ik's ggml
gives (row_meta included), attach `keep` and detach copy them byte for byte, each file says which
runtime loads it, and the table matches both runtimes' ggml sources where the toolchain cache holds them."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import tensor_bytes

from mtpgraft import ggml_types as gt
from mtpgraft.errors import GGUFFormatError
from mtpgraft.gguf_io import CONVERTER, GGUFFile, GGUFModel, OutTensor
from mtpgraft.graft import execute_graft, plan_attach, plan_detach
from mtpgraft.testmodels.synthetic import make_model, rewrite

# Bytes of a (256, 32) tensor (32 rows of 256), worked out by hand from ik's ggml.c type_traits:
# rows * (row_meta_size + 256 / blck_size * type_size).
ROWS_256x32 = {
    "IQ4_KS": 32 * (4 + 136), "IQ2_KS": 32 * (2 + 70), "IQ3_KS": 32 * (2 + 102), "IQ2_KL": 32 * (2 + 86),
    "IQ4_KSS": 32 * (4 + 128), "IQ5_KS": 32 * (4 + 168), "IQ1_KT": 32 * (4 + 56), "IQ2_KT": 32 * (4 + 68),
    "IQ3_KT": 32 * (4 + 100), "IQ4_KT": 32 * (4 + 128), "Q8_KV": 32 * (8 + 8 * 32), "IQ1_BN": 32 * (2 + 4 * 13),
    "IQ2_BN": 32 * (4 + 4 * 16), "Q6_0": 32 * 8 * 26, "IQ2_K": 32 * 76, "IQ3_K": 32 * 110, "IQ4_K": 32 * 144,
    "IQ5_K": 32 * 176, "IQ6_K": 32 * 212, "IQ4_KS_R4": 32 * (4 + 136), "Q8_K_R8": 32 * 258,
    "IQ1_S_R4": 32 * (2 + 8 * 6), "Q6_0_R4": 32 * 8 * 26, "Q4_0_4_4": 32 * 8 * 18,
}


def _retype(path: Path, out: Path, types: dict[str, str], *, seed: int = 0) -> Path:
    """`path` with each 256-wide weight whose name contains a key of `types` re-typed as that ik type, filled
    with random bytes of the size ROWS_256x32 gives (not the table's formula: the parser must agree)."""
    def edit(ts: list[OutTensor]) -> list[OutTensor]:
        res = []
        for t in ts:
            want = types.get(t.name) or next((v for k, v in types.items() if k in t.name), None)
            if want is None or len(t.ne) != 2 or t.ne[0] != 256:
                res.append(t)
                continue
            n = ROWS_256x32[want] * t.ne[1] // 32
            data = random.Random(f"{seed}:{t.name}").randbytes(n)  # same name, same bytes in every file
            res.append(OutTensor(t.name, t.ne, gt.BY_NAME[want].id, n, produce=lambda d=data: [d]))
        return res

    return rewrite(path, out, tensors=edit)


@pytest.fixture
def ik_full(tmp_path: Path) -> dict[str, Path]:
    """A qwen35 full model 256 wide whose MTP block (blk.4) holds ik types, and its base (F16 trunk)."""
    full = make_model(tmp_path / "full.gguf", n_embd=256, n_ff=256)
    base = make_model(tmp_path / "base.gguf", n_embd=256, n_ff=256, layout="base")
    types = {"blk.4.attn_q.": "IQ4_KS", "blk.4.attn_k.": "IQ2_KT", "blk.4.attn_v.": "Q8_KV",
             "blk.4.ffn_up": "IQ2_KL", "blk.4.ffn_gate": "Q6_0",
             "blk.4.ffn_down": "IQ4_KS_R4", "token_embd": "IQ5_KS"}
    return {"full": _retype(full, tmp_path / "ik-full.gguf", types),
            "base": _retype(base, tmp_path / "ik-base.gguf", {"token_embd": "IQ5_KS"}), "types": types}


def test_ik_typed_file_parses_with_ik_sizes(tmp_path):
    src = make_model(tmp_path / "m.gguf", n_embd=256, n_ff=256, layout="base", trunk=8)
    wide = [t.name for t in GGUFFile(src).tensors if len(t.ne) == 2 and t.ne[0] == 256 and t.ne[1] % 32 == 0]
    names = sorted(ROWS_256x32)
    assert len(wide) >= len(names)
    per = {w: names[i % len(names)] for i, w in enumerate(wide)}  # every type at least once
    out = _retype(src, tmp_path / "ik.gguf", per)
    f = GGUFFile(out)
    assert f.defects == []  # every tensor starts where the previous one's size says it ends
    seen = set()
    for t in f.tensors:
        if t.name in per:
            want = per[t.name]
            assert (t.type_name, t.nbytes) == (want, ROWS_256x32[want] * t.ne[1] // 32), t.name
            seen.add(want)
    assert seen == set(names)
    last = f.tensors[-1]
    assert f.data_offset + last.offset + last.nbytes == out.stat().st_size


def test_attach_keep_copies_ik_types_exactly_and_detach_gives_the_base(ik_full, tmp_path):
    out = tmp_path / "out.gguf"
    execute_graft(plan_attach(ik_full["base"], ik_full["full"], out, mtp_type="keep"), layout=CONVERTER)
    full, got = GGUFModel(ik_full["full"]), GGUFModel(out)
    ik_mtp = [r for r in full.refs if r.name.startswith("blk.4.") and gt.BY_ID[r.info.ggml_type].runtimes == {"ik"}]
    assert len(ik_mtp) == 6
    for r in full.refs:
        if r.name.startswith("blk.4."):
            assert got.by_name[r.name].info.ggml_type == r.info.ggml_type
            assert tensor_bytes(got, r.name) == tensor_bytes(full, r.name), r.name
    assert tensor_bytes(got, "token_embd.weight") == tensor_bytes(GGUFModel(ik_full["base"]), "token_embd.weight")
    det = tmp_path / "det.gguf"
    execute_graft(plan_detach(out, det), layout=CONVERTER)
    base, back = GGUFModel(ik_full["base"]), GGUFModel(det)
    assert [r.name for r in back.refs] == [r.name for r in base.refs]
    assert all(tensor_bytes(back, r.name) == tensor_bytes(base, r.name) for r in base.refs)
    det_full = tmp_path / "det-full.gguf"  # the ik-typed full model's trunk is the ik-typed base, byte for byte
    execute_graft(plan_detach(ik_full["full"], det_full), layout=CONVERTER)
    assert det_full.read_bytes() == ik_full["base"].read_bytes()


def test_runtimes_of_a_file_and_mainlines_refusal(ik_full):
    f = GGUFFile(ik_full["full"])
    ids = {t.ggml_type for t in f.tensors}
    assert gt.runtimes_for_types(ids) == {"ik"}
    assert gt.runtimes_label(gt.runtimes_for_types(ids)) == "ik_llama.cpp only"
    assert gt.runtimes_label(gt.runtimes_for_types({0, 1, 8})) == "llama.cpp and ik_llama.cpp"
    assert gt.runtimes_label(gt.runtimes_for_types({0, 34})) == "llama.cpp only"  # TQ1_0
    got = gt.loadable_by((t.name, t.ggml_type, t.ne[0]) for t in f.tensors)
    # token_embd comes first in the file and is IQ5_KS (152): where mainline's gguf.cpp stops
    assert got == {"ik": None,
                   "mainline": "tensor 'token_embd.weight' has invalid ggml type 152. should be in [0, 43)"}
    assert gt.loader_refusal("mainline", "w", 31, 64) == (
        "tensor 'w' of type 31 (TYPE_Q4_0_4_4 REMOVED, use Q4_0 with runtime repacking) has 64 elements "
        "per row, not a multiple of block size (0)")


@pytest.mark.tools
@pytest.mark.parametrize("ik_type", ["IQ5_KS", "IQ2_KT", "Q4_0_4_4"])
def test_mainline_refuses_an_ik_type_as_predicted(ik_type, tmp_path):
    """mainline's llama-server says exactly what loadable_by predicts (an id >= 43, or one it removed)."""
    from mtpgraft.tools import find_tool, run_tool

    src = make_model(tmp_path / "m.gguf", n_embd=256, n_ff=256, layout="base")
    out = _retype(src, tmp_path / "ik.gguf", {"blk.1.ffn_up": ik_type})
    f = GGUFFile(out)
    predicted = gt.loadable_by((t.name, t.ggml_type, t.ne[0]) for t in f.tensors)
    assert predicted["ik"] is None and predicted["mainline"] is not None
    r = run_tool([find_tool("llama-server"), "-m", out, "--port", "0"], timeout=120, check=False)
    assert r.returncode != 0 and predicted["mainline"] in r.stdout, r.stdout[-2000:]


def test_ids_that_differ_between_runtimes():
    assert gt.AMBIGUOUS_IDS == {15}  # Q8_K: 292 bytes a block in mainline, 296 in ik
    assert gt.tensor_type(15) is None
    assert (gt.tensor_type(15, "mainline").size, gt.tensor_type(15, "ik").size) == (292, 296)
    assert gt.type_name(41) == "Q1_0" and gt.type_name(41, "ik") == "Q1_0_G128"
    assert gt.tensor_type(34, "ik") is None and gt.tensor_type(133, "mainline") is None
    assert gt.BY_NAME["Q1_0_G128"] is gt.BY_NAME["Q1_0"]
    # file types: ik numbers its own apart from its tensor ids, and 38 / 41 mean other things
    assert gt.IK_FILE_TYPES["IQ4_KS"] == 145 and gt.BY_NAME["IQ4_KS"].id == 144
    assert gt.file_type_name(145) == "IQ4_KS" and gt.file_type_name(41) == "Q2_0"
    assert gt.file_type_name(41, "ik") == "Q1_0_G128" and gt.file_type_name(38, "ik") == "MXFP4"
    assert gt.file_type_runtimes("IQ4_KS") == {"ik"} and gt.file_type_runtimes("Q4_K_M") == {"mainline", "ik"}


def test_parser_refuses_an_ambiguous_type_instead_of_guessing(tmp_path):
    src = make_model(tmp_path / "m.gguf", n_embd=256, n_ff=256, layout="base")

    def q8k(ts: list[OutTensor]) -> list[OutTensor]:
        return [OutTensor(t.name, t.ne, 15, 32 * 292, produce=lambda: [bytes(32 * 292)])
                if t.name == "token_embd.weight" else t for t in ts]  # (256, 32)

    out = rewrite(src, tmp_path / "q8k.gguf", tensors=q8k)
    with pytest.raises(GGUFFormatError, match=r"ggml type 15 \(Q8_K\) is 292 bytes per 256 elements in "
                                              r"llama.cpp but 296 in ik_llama.cpp; mtpgraft does not guess"):
        GGUFFile(out)


# ----------------------------------------------------------------------------- the table vs the sources


def _traits_from_source(src: Path, tmp_path: Path) -> dict[int, tuple[str, int, int, int]]:
    """{id: (name, blck_size, type_size, row_meta_size)} as the runtime's own ggml computes them: a
    C program built from its ggml.c type_traits initializers and its ggml-common.h block structs."""
    text = (src / "ggml" / "src" / "ggml.c").read_text()
    body = text[text.index("type_traits[GGML_TYPE_COUNT]"):]
    body = body[body.index("{") + 1:body.index("\n};")]
    lines = []
    for m in re.finditer(r"\[GGML_TYPE_(\w+)\]\s*=\s*\{(.*?)\n\s*\},", body, re.S):
        f = {k: v.strip() for k, v in re.findall(r"\.(\w+)\s*=\s*([^,\n]+)", m.group(2))}
        lines.append(f'printf("%d %s %lld %lld %lld\\n", (int)GGML_TYPE_{m.group(1)}, "{m.group(1)}", '
                     f'(long long)({f["blck_size"]}), (long long)({f["type_size"]}), '
                     f'(long long)({f.get("row_meta_size", "0")}));')
    c = tmp_path / "traits.c"
    c.write_text('#include <stdio.h>\n#include "ggml.h"\n#define GGML_COMMON_DECL_C\n#include "ggml-common.h"\n'
                 "int main(void) {\n" + "\n".join(lines) + "\nreturn 0; }\n")
    exe = tmp_path / "traits"
    subprocess.run(["cc", "-w", f"-I{src / 'ggml' / 'include'}", f"-I{src / 'ggml' / 'src'}", str(c), "-o", str(exe)],
                   check=True, timeout=120)
    rows = (line.split() for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                    check=True).stdout.splitlines())
    return {int(i): (n, int(b), int(s), int(rm)) for i, n, b, s, rm in rows if int(b) > 0}


@pytest.mark.parametrize("runtime", ["mainline", "ik"])
def test_table_matches_the_runtimes_ggml_source(runtime, tmp_path):
    from mtpgraft.pins import toolchain_root

    src = toolchain_root(runtime) / "src"
    if not (src / "ggml" / "src" / "ggml.c").is_file() or shutil.which("cc") is None:
        pytest.skip(f"no {runtime} source in the toolchain cache (mtpgraft toolchain --runtime {runtime}) or no cc")
    traits = _traits_from_source(src, tmp_path)
    table = gt.types_of(runtime)
    assert sorted(table) == sorted(traits)  # every type the runtime has, and no other
    for i, (name, block, size, row_meta) in traits.items():
        t = table[i]
        want = gt.IK_NAMES.get(i, t.name) if runtime == "ik" else t.name
        assert (want, t.block, t.size, t.row_meta) == (name, block, size, row_meta), i

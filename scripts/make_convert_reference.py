#!/usr/bin/env python3
"""Make the converter references in tests/data/convert-ref/ with llama.cpp's REAL converter.

mtpgraft converts the MTP head of a safetensors checkpoint itself, in numpy. These references prove
it writes what llama.cpp's convert_hf_to_gguf.py writes, byte for byte: tests/test_sources_convert.py
rebuilds each checkpoint from the same seed (mtpgraft.testmodels.checkpoints, numpy only), converts it
with mtpgraft and compares names, types, shapes, bytes, order and the head's metadata.

How the committed references were made (2026-12-01):
- converter: convert_hf_to_gguf.py of llama.cpp 0c1e570 as unpacked by `mtpgraft toolchain` into
  ~/.cache/mtpgraft/toolchain/llama.cpp-0c1e570/src, with its own vendored gguf-py;
- its own venv (never a dependency of mtpgraft), Python 3.11.7:
      python3 -m venv /tmp/convenv
      /tmp/convenv/bin/pip install torch-2.13.0+cpu (the CPU wheel) transformers==4.57.6 \\
          safetensors==0.8.0 sentencepiece==0.2.3 'protobuf<5' numpy==2.2.6
  (transformers 4.57.6 does not know model_type qwen3_5, so the converter falls back to reading
  config.json as is, exactly as mtpgraft does);
  the Qwen3-Next references were added on 2026-12-07 with a venv made by
      /tmp/convenv/bin/pip install torch transformers safetensors sentencepiece 'protobuf<5' numpy
  (from PyPI: torch 2.14.1, transformers 5.25.0, safetensors 0.8.0, sentencepiece 0.2.3, protobuf
  4.25.9, numpy 2.4.6), which rewrote every earlier reference byte for byte (the converter reads
  config.json through transformers' AutoConfig where it knows the model type, qwen3_next and glm4_moe
  here: the tiny configs state every field it reads, so its defaults never differ from the file);
- the command, per case: `python runconv.py SRC CHECKPOINT_DIR --outtype OUTTYPE --outfile OUT.gguf`,
  where runconv.py (written by this script) runs convert_hf_to_gguf.py's main unchanged except for one
  patch: `TextModel.get_vocab_base_pre` returns "qwen35". The converter identifies a BPE tokenizer by
  hashing how it tokenizes a test string and only accepts hashes of published models; a tiny test
  vocabulary can have none of those, and the vocabulary is stripped from the reference anyway (GLM's
  _set_vocab_glm goes through the same function; the tiny tokenizer has GLM's special tokens); and a
  second: DeepseekV32Model.set_vocab skips its check that the tokenizer adds a BOS token (which
  transformers 5's tokenizer backend does not report for a tiny byte-level vocabulary) and goes
  straight to the _set_vocab_gpt2 it calls next; and a third, for Step-3.5 only: AutoTokenizer is given an
  empty model config (transformers 5 validates config.json's layer_types against num_hidden_layers when
  it loads the tokenizer, and Step-3.5's layer_types has entries for the MTP layers too; vocabulary only);
- checkpoints: Qwen3.5/3.6 dense and MoE (mtp.* head, text_config nested) and GLM-4.5 MoE
  (Glm4MoeForCausalLM: the MTP layer is model.layers.N with eh_proj, enorm, hnorm, shared_head.*,
  embed_tokens; per-expert tensors; attention biases; e_score_correction_bias) and Qwen3-Next MoE
  (Qwen3NextForCausalLM: flat config.json without mtp_num_hidden_layers, so the converter counts the
  mtp.layers.K it finds; fused in_proj_qkvz, whose trunk rows the recipe takes as a byte range) and
  GLM-5 (GlmMoeDsaForCausalLM: DeepSeek-V3.2's layout, MLA with q/kv LoRA and the DSA indexer; the
  MTP layer is model.layers.N as for GLM-4.5; kv_b_proj becomes attn_k_b, each head's slab transposed,
  and attn_v_b, which the trunk recipe rebuilds with its kb/vb steps), GLM-4.7-Flash
  (Glm4MoeLiteForCausalLM: the same without the indexer), DeepSeek-V3.2 (DeepseekV32ForCausalLM) and
  Hy3 (HYV3ForCausalLM: tensors named as transformers saves them, mlp.router.gate, mlp.expert_bias,
  mlp.shared_mlp, per-expert; the MTP layer's final_layernorm); and (2026-12-07) MiMo-V2
  (MiMoV2FlashForCausalLM: three model.mtp.layers.* heads, which config.json does not count, fused
  qkv_proj, attention sinks, per-layer head_count_kv and sliding_window_pattern extended for the heads)
  and Step-3.5 (Step3p5ForCausalLM: model.layers.N+i heads, +1 norms, transformer.shared_head.*,
  per-layer arrays from layer_types with the MTP entries; its config.json has no model_type: transformers
  5 knows step3p5 and renames the fields the pinned Step35Model reads, which then fails with a KeyError,
  so the pinned converter only reads a Step-3.5 config.json as it is where transformers does not know the
  type, as with the 4.57 of the first references);
  Ling 3 (BailingMoeV3ForCausalLM: attention.* MLA cut by num_attention_heads, a
  head-wise g_proj gate, mlp.gate.expert_bias; layer_group_size 1, so every trunk layer is MLA and
  head_count_kv is all 1s; the MTP layer's final_layernorm is layer_output_norm) and Nemotron-3
  (NemotronHForCausalLM: backbone.*, one Mamba2, one attention and one MoE layer; the head as
  mtp.layers.0 and mtp.layers.1, which the converter folds into one block) and Cohere 2 MoE
  (Cohere2MoeForCausalLM: GLM-4.5's layout with zero attention biases, which the converter drops;
  converted with --no-lazy, see CONVERT_FLAGS; not in E2E: the converter refuses --no-mtp for it, so
  its head is proven against the MTP block of the full conversion only);
- kept: the MTP block's tensors (blk.L.* for L >= the trunk) exactly as written, and the converter's
  values of the structural keys listed in KEPT_KEYS and KEPT_BEFORE_NEXTN (vocabulary, names and size
  labels dropped), plus
  `reference.*` keys saying how the file was made;
- and for the whole-model proof (E2E): the converter's full file and its `--no-mtp` file of the same
  checkpoint, every tensor and key kept except the `tokenizer.*` keys (`<variant>-full.gguf`,
  `<variant>-trunk.gguf`): grafting mtpgraft's head onto the trunk must give the full file;
- what is committed: no GGUF file. Of each head and full file only its fingerprint
  (mtpgraft.testmodels.fingerprint: each key's and tensor's sha256, in order) in references.json,
  which is all the comparisons need; of each trunk (the whole-file test's input) its recipe in
  trunks.json (mtpgraft.testmodels.trunks: its metadata, and for every tensor the checkpoint
  tensors and the one-line step that make its bytes, with the file's sha256), from which the test
  rebuilds the converter's trunk byte for byte.

Run from the repository root:  .venv/bin/python scripts/make_convert_reference.py [--convenv /tmp/convenv]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from gguf import GGUFValueType as V

from mtpgraft.gguf_io import CONVERTER, GGUFModel, OutTensor, encode_kv, write_gguf
from mtpgraft.pins import toolchain_root
from mtpgraft.testmodels.checkpoints import VARIANTS, build_checkpoint
from mtpgraft.testmodels.fingerprint import fingerprint
from mtpgraft.testmodels.trunks import derive

SEED = 0
CASES = [("glm4moe-bf16", "auto"), ("dense-bf16", "auto"), ("dense-bf16", "f16"), ("dense-bf16", "q8_0"), ("dense-f16", "auto"),
         ("dense-f16", "bf16"), ("dense-f16", "f32"), ("moe-bf16", "auto"), ("moe-f16-per-expert", "auto"),
         ("qwen3next-bf16", "auto"), ("glm-dsa-bf16", "auto"), ("glm-dsa-bf16", "q8_0"), ("glm47flash-bf16", "auto"),
         ("deepseek32-bf16", "auto"), ("hy3-bf16", "auto")]
CASES += [("mimo2-bf16", "auto"), ("step35-bf16", "auto"), ("step35-bf16", "q8_0")]
E2E = ("dense-bf16", "moe-bf16", "glm4moe-bf16", "qwen3next-bf16", "glm-dsa-bf16", "glm47flash-bf16", "deepseek32-bf16",
       "hy3-bf16")
E2E += ("mimo2-bf16", "step35-bf16")
CASES += [("ling3-bf16", "auto"), ("nemotron3-bf16", "auto"), ("cohere2moe-bf16", "auto")]
E2E += ("ling3-bf16", "nemotron3-bf16")  #  (not cohere2moe: see the docstring)
KEPT_KEYS = ("block_count", "context_length", "embedding_length", "feed_forward_length",
             "attention.head_count", "attention.head_count_kv", "attention.key_length",
             "attention.value_length", "expert_count", "expert_used_count", "expert_feed_forward_length",
             "expert_group_count", "expert_group_used_count", "expert_gating_func",
             "expert_shared_feed_forward_length", "expert_shared_count", "leading_dense_block_count",
             "expert_weights_scale", "expert_weights_norm", "nextn_predict_layers", "attention.recurrent_layers",
             "full_attention_interval")
# Kept too for the families whose converter writes them just before nextn_predict_layers: the head
# carries them so that a graft places the count there (graft inserts it after the head's previous key).
KEPT_BEFORE_NEXTN = dict.fromkeys(("glm-dsa", "deepseek2", "deepseek32"), ("rope.dimension_count",))
# MiMo-V2's head also carries the per-layer sliding_window_pattern it extends, and the keys the
# converter writes after it up to nextn_predict_layers.
KEPT_BEFORE_NEXTN["mimo2"] = ("attention.sliding_window_pattern", "rope.dimension_count", "attention.value_scale")
KEPT_BEFORE_NEXTN["step35"] = ("attention.sliding_window_pattern", "moe_every_n_layers", "swiglu_clamp_exp",
                               "swiglu_clamp_shexp")
KEPT_BEFORE_NEXTN["bailingmoe3"] = ("swiglu_clamp_exp", "swiglu_clamp_shexp")
# the pinned converter's lazy mode cannot run Cohere2MoeModel's check that a bias is zero
# (torch.any on a lazy tensor raises), so any checkpoint with biases converts only with --no-lazy.
CONVERT_FLAGS = {"cohere2moe-bf16": ("--no-lazy",)}
RUNCONV = '''import runpy, sys
src = sys.argv[1]
sys.path.insert(0, src)
sys.argv = [src + "/convert_hf_to_gguf.py"] + sys.argv[2:]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen35"  # see the docstring
import conversion.deepseek as deepseek
deepseek.DeepseekV32Model.set_vocab = lambda self: self._set_vocab_gpt2()  # without its add_bos_token check
import json, transformers  # Step-3.5's tokenizer loads without the model config (see the docstring)
if json.loads(open(sys.argv[1] + "/config.json").read())["architectures"] == ["Step3p5ForCausalLM"]:
    _from_pretrained = transformers.AutoTokenizer.from_pretrained
    transformers.AutoTokenizer.from_pretrained = lambda *a, **k: _from_pretrained(*a, config=transformers.PretrainedConfig(), **k)
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
'''
OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "convert-ref"


def reference_name(variant: str, outtype: str) -> str:
    return f"{variant}-{outtype}.gguf"


def keep(converted: Path, out: Path, variant: str, outtype: str) -> None:
    m = GGUFModel(converted)
    arch = m.arch
    kept = KEPT_KEYS + KEPT_BEFORE_NEXTN.get(arch, ())
    keys = ["general.architecture"] + [f"{arch}.{k}" for k in kept] + ["general.file_type"]
    kvs = [m.kv[k] for k in m.kv if k in keys]
    # reference.checkpoint names the generator as it was called when references.json was made
    # (now mtpgraft.testmodels.checkpoints): the label is part of the fingerprints, so it stays.
    kvs += [encode_kv("reference.converter", V.STRING, "llama.cpp 0c1e570 convert_hf_to_gguf.py"),
            encode_kv("reference.checkpoint", V.STRING, f"mtpgraft.sources.checkpoints {variant} seed {SEED}"),
            encode_kv("reference.outtype", V.STRING, outtype)]
    trunk = int(m.get(f"{arch}.block_count")) - int(m.get(f"{arch}.nextn_predict_layers"))
    mtp = [r for r in m.refs if r.name.startswith("blk.") and int(r.name.split(".")[1]) >= trunk]
    tensors = [OutTensor(r.name, r.info.ne, r.info.ggml_type, r.info.nbytes, r.path, r.abs_offset) for r in mtp]
    with open(out, "wb") as fh:
        write_gguf(fh, kvs, tensors, alignment=m.alignment, layout=CONVERTER)  # no padding key


def strip_vocab(converted: Path, out: Path) -> None:
    m = GGUFModel(converted)
    kvs = [kv for k, kv in m.kv.items() if not k.startswith("tokenizer.")]
    tensors = [OutTensor(r.name, r.info.ne, r.info.ggml_type, r.info.nbytes, r.path, r.abs_offset) for r in m.refs]
    with open(out, "wb") as fh:
        write_gguf(fh, kvs, tensors, alignment=m.alignment, layout=CONVERTER)  # no padding key


def convert(py: Path, runconv: Path, src: str, ckpt: Path, out: Path, *flags: str) -> None:
    cmd = [str(py), str(runconv), src, str(ckpt), *flags, "--outfile", str(out)]
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--convenv", default="/tmp/convenv", help="venv with torch and transformers")
    ap.add_argument("--src", default=str(toolchain_root() / "src"), help="llama.cpp source tree")
    args = ap.parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    py = Path(args.convenv) / "bin" / "python"
    refs, trunks = {}, {}
    with tempfile.TemporaryDirectory(prefix="mtpgraft-ref-") as tmp:
        t = Path(tmp)
        (t / "runconv.py").write_text(RUNCONV)
        for variant in sorted({v for v, _ in CASES}):
            build_checkpoint(t / variant, variant, seed=SEED)
        for variant, outtype in CASES:
            assert variant in VARIANTS
            conv = t / f"{variant}-{outtype}.full.gguf"
            convert(py, t / "runconv.py", args.src, t / variant, conv, "--outtype", outtype,
                    *CONVERT_FLAGS.get(variant, ()))
            name = reference_name(variant, outtype)
            keep(conv, t / name, variant, outtype)
            refs[name] = fingerprint(t / name)
            if variant in E2E and outtype == "auto":
                strip_vocab(conv, t / f"{variant}-full.gguf")
                refs[f"{variant}-full.gguf"] = fingerprint(t / f"{variant}-full.gguf")
                trunk = t / f"{variant}.trunk.gguf"
                convert(py, t / "runconv.py", args.src, t / variant, trunk, "--no-mtp")
                strip_vocab(trunk, t / f"{variant}-trunk.gguf")
                trunks[variant] = derive(t / f"{variant}-trunk.gguf", t / variant)
    for name, data in (("references.json", refs), ("trunks.json", trunks)):
        (OUT_DIR / name).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Safetensors -> GGUF for the MTP head only, in numpy: what llama.cpp's convert_hf_to_gguf.py (at the
pinned commit) writes for these tensors, byte for byte.

The converter's rules for Qwen3.5/3.6 (conversion/qwen.py `_QwenMtpMixin`, `Qwen3NextModel`,
`Qwen2MoeModel`; conversion/base.py `prepare_tensors`):
- `mtp.layers.i.X` becomes layer L = num_hidden_layers + i; `mtp.fc` / `pre_fc_norm_embedding` /
  `pre_fc_norm_hidden` / `norm` become `nextn.eh_proj` / `enorm` / `hnorm` / `shared_head_norm` of L.
- Tensors are visited in safetensors order: shards sorted by name, tensor names sorted in each shard.
- BF16 (anything not F16/F32) is cast to float32 first; every `*norm.weight` gets +1 in that dtype.
- MoE: `experts.gate_up_proj` [E, 2F, H] is split on dim -2 (gate, then up); per-expert tensors are
  stacked when the last one arrives (down, gate, up).
- 1-D tensors, `*_norm.weight`, non-`.weight` tensors, `ffn_gate_inp` and `ffn_gate_inp_shexp` are F32;
  the others take the output type (auto: BF16/F16 by the first 2-D tensor, else F16). F16 by astype,
  BF16 and Q8_0 by gguf-py's quantizers (Q8_0 falls back to F16 for rows it cannot hold).
- The GGUF shape is the HF shape reversed; no data is transposed.

`rules` is the table (`HEAD_RULES`: a row per Hugging Face architecture, and those `REFUSED`); `config`
reads config.json; `head` (`plan_head`) reads headers only and plans every tensor, with `kvs` the keys;
`fit` (`check_head_against_base`) compares the plan with a base GGUF before any tensor byte is fetched;
`write` (`write_head`) streams the tensors, one bounded chunk at a time, from wherever `locate` says the
bytes are. Only `write` uses numpy and gguf-py, when it runs: planning imports neither.
"""

from __future__ import annotations

from .config import CONFIG_INTS, check_config, head_rule, read_config, text_config
from .fit import check_head_against_base
from .head import OUTTYPES, HeadPlan, HeadTensor, Piece, mtp_predicate, plan_head
from .kvs import head_kvs
from .rules import HEAD_RULES, REFUSED, HeadRule
from .write import CHUNK_BYTES, Locate, encode_head_kvs, tensor_producer, write_head

__all__ = [
    "CHUNK_BYTES", "CONFIG_INTS", "HEAD_RULES", "OUTTYPES", "REFUSED", "HeadPlan", "HeadRule", "HeadTensor", "Locate",
    "Piece", "check_config", "check_head_against_base", "encode_head_kvs", "head_kvs", "head_rule", "mtp_predicate",
    "plan_head", "read_config", "tensor_producer", "text_config", "write_head",
]

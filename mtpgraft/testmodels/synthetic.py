"""The qwen35 / qwen35moe tensor layout of the runnable tiny models, at any size, without weights.

Tests of graft mechanics (tests/ggufgen.py), the Hub tests and the benchmarks (scripts/bench_attach.py)
need files shaped like the test models but smaller (fast unit tests) or far larger (benchmarks), with
synthetic data. `qwen35_specs` gives them the names, shapes (ggml order, ne[0] first) and tensor order
of `build_tiny_model` for any dimensions; tests/test_testmodels.py checks that at the tiny models'
own dimensions it is exactly what build_tiny_model writes. The callers fill the data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dims:
    """Sizes of a qwen35-shaped model (the defaults are the runnable tiny models')."""

    n_embd: int = 256
    n_ff: int = 512
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    ssm_state: int = 64
    ssm_groups: int = 2
    ssm_rank: int = 4
    n_expert: int = 4
    n_ff_exp: int = 256
    n_ff_shexp: int = 256
    vocab: int = 512
    full_attention_interval: int = 4


def _layer(arch: str, il: int, d: Dims, *, mtp: bool) -> dict[str, tuple[int, ...]]:
    """{suffix: ne} of one block (shapes as the converter writes them, ne[0] first)."""
    e = d.n_embd
    t: dict[str, tuple[int, ...]] = {"attn_norm.weight": (e,), "post_attention_norm.weight": (e,)}
    if mtp or (il + 1) % d.full_attention_interval == 0:
        t |= {"attn_q_norm.weight": (d.head_dim,), "attn_k_norm.weight": (d.head_dim,),
              "attn_q.weight": (e, 2 * d.n_head * d.head_dim), "attn_k.weight": (e, d.n_head_kv * d.head_dim),
              "attn_v.weight": (e, d.n_head_kv * d.head_dim), "attn_output.weight": (d.n_head * d.head_dim, e)}
    else:
        key, value = d.ssm_state * d.ssm_groups, d.ssm_state * d.ssm_rank
        conv = 2 * key + value
        t |= {"attn_qkv.weight": (e, conv), "attn_gate.weight": (e, value), "ssm_conv1d.weight": (4, conv),
              "ssm_dt.bias": (d.ssm_rank,), "ssm_a": (d.ssm_rank,), "ssm_beta.weight": (e, d.ssm_rank),
              "ssm_alpha.weight": (e, d.ssm_rank), "ssm_norm.weight": (d.ssm_state,),
              "ssm_out.weight": (value, e)}
    if arch == "qwen35moe":
        x, f, s = d.n_expert, d.n_ff_exp, d.n_ff_shexp
        t |= {"ffn_gate_inp.weight": (e, x), "ffn_gate_exps.weight": (e, f, x), "ffn_up_exps.weight": (e, f, x),
              "ffn_down_exps.weight": (f, e, x), "ffn_gate_inp_shexp.weight": (e,),
              "ffn_gate_shexp.weight": (e, s), "ffn_up_shexp.weight": (e, s), "ffn_down_shexp.weight": (s, e)}
    else:
        t |= {"ffn_gate.weight": (e, d.n_ff), "ffn_up.weight": (e, d.n_ff), "ffn_down.weight": (d.n_ff, e)}
    if mtp:
        t |= {"nextn.eh_proj.weight": (2 * e, e), "nextn.enorm.weight": (e,), "nextn.hnorm.weight": (e,),
              "nextn.shared_head_norm.weight": (e,)}
    return t


def qwen35_specs(arch: str = "qwen35", *, trunk: int = 4, layout: str = "full",
                 dims: Dims = Dims()) -> list[tuple[str, tuple[int, ...]]]:
    """[(tensor name, ne)] of a qwen35/qwen35moe model in build_tiny_model's order: output, token_embd,
    the trunk blocks, output_norm, then the MTP block blk.{trunk} (layout full | base | mtp-only)."""
    from . import _ordered

    def block(il: int, mtp: bool) -> list[tuple[str, tuple[int, ...]]]:
        b = _layer(arch, il, dims, mtp=mtp)
        return [(f"blk.{il}.{k}", b[k]) for k in _ordered(b, arch, mtp=mtp)]

    out = [("output.weight", (dims.n_embd, dims.vocab)), ("token_embd.weight", (dims.n_embd, dims.vocab))]
    if layout != "mtp-only":
        for il in range(trunk):
            out += block(il, False)
    out.append(("output_norm.weight", (dims.n_embd,)))
    if layout != "base":
        out += block(trunk, True)
    return out

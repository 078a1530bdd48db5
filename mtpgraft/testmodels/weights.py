"""The weights every family builds its tiny models from: token directions, embeddings and output
rows, trunk blocks, and the aligned / mixed / random MTP heads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .dims import (
    FULL_ATTENTION_INTERVAL,
    HEAD_DIM,
    HEADS,
    N_EMBD,
    N_EXPERT,
    N_FF,
    N_FF_EXP,
    N_FF_SHEXP,
    N_HEAD,
    N_HEAD_KV,
    N_VOCAB,
    SSM_CONV_KERNEL,
    SSM_GROUP_COUNT,
    SSM_STATE_SIZE,
    SSM_TIME_STEP_RANK,
)
from .vocab import TinyVocab

if TYPE_CHECKING:  # numpy is imported where it is used, so `mtpgraft --help` does not pay for it
    import numpy as np

LOGIT_SCALE = 2.0  # output rows have norm 2; the normed hidden state has norm 16: margin 32
_EMBED_NORM = 16.0  # |token embedding| (elements ~ +-1): keeps every weight well inside f16 / K-quant range
BRANCH_STD = 1.6e-3  # residual-branch output projections: each adds ~1-2% of the embedding's norm
IN_STD = 1.0 / 16.0  # input projections: unit-variance activations from a normed input
_FLIP = 3.0  # the mixed head's FFN adds -3x the state on a wrong token: the state becomes its antipode
_GATE_Z = 8.0  # pre-activation of a lookup unit on its own token (silu(8) ~ 8; silu(-8) ~ 0)


def rotation(seed: int, n: int = N_EMBD, stream: int = 2) -> np.ndarray:
    import numpy as np

    q, r = np.linalg.qr(np.random.default_rng([seed, stream]).standard_normal((n, n)))
    return q * np.sign(np.diag(r))  # columns: orthonormal token directions


def direction(R: np.ndarray, t: int) -> np.ndarray:
    """Unit vector of token t: +-R[:, t mod n] for an n x n rotation R (n = 256: t and t^256 are
    antipodes; n = 512: every token has its own direction)."""
    n = R.shape[1]
    return R[:, t % n] * (1.0 if t < n else -1.0)


class Gen:
    def __init__(self, *key: int) -> None:
        import numpy as np

        self.rng = np.random.default_rng(list(key))

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return (self.rng.standard_normal(shape) * std).astype("float32")

    def norm(self, n: int) -> np.ndarray:
        # Qwen3.5 norms are stored with the +1 the converter adds: values around 1.
        return (1.0 + self.rng.standard_normal(n) * 0.02).astype("float32")


def embeddings(seed: int, vocab: TinyVocab) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    R = rotation(seed)
    g = Gen(seed, 3)
    embd = np.stack([direction(R, t) * _EMBED_NORM for t in range(N_VOCAB)]).astype(np.float32)
    embd += g.normal(embd.shape, 0.002 * _EMBED_NORM)
    out = np.zeros((N_VOCAB, N_EMBD), dtype=np.float32)
    for t, s in enumerate(vocab.succ):
        out[s] += LOGIT_SCALE * direction(R, t)
    out += g.normal(out.shape, 0.002)
    return embd, out


def attention_block(g: Gen, *, branch_std: float) -> dict[str, np.ndarray]:
    q_out = 2 * N_HEAD * HEAD_DIM  # query + output gate
    return {
        "attn_q_norm.weight": g.norm(HEAD_DIM),
        "attn_k_norm.weight": g.norm(HEAD_DIM),
        "attn_q.weight": g.normal((q_out, N_EMBD), IN_STD),
        "attn_k.weight": g.normal((N_HEAD_KV * HEAD_DIM, N_EMBD), IN_STD),
        "attn_v.weight": g.normal((N_HEAD_KV * HEAD_DIM, N_EMBD), IN_STD),
        "attn_output.weight": g.normal((N_EMBD, N_HEAD * HEAD_DIM), branch_std),
    }


def linear_attention_block(g: Gen) -> dict[str, np.ndarray]:
    import numpy as np

    key_dim = SSM_STATE_SIZE * SSM_GROUP_COUNT
    value_dim = SSM_STATE_SIZE * SSM_TIME_STEP_RANK
    conv_dim = 2 * key_dim + value_dim
    return {
        "attn_qkv.weight": g.normal((conv_dim, N_EMBD), IN_STD),
        "attn_gate.weight": g.normal((value_dim, N_EMBD), IN_STD),
        "ssm_conv1d.weight": g.normal((conv_dim, SSM_CONV_KERNEL), 0.5),
        "ssm_dt.bias": g.normal((SSM_TIME_STEP_RANK,), 0.5),
        "ssm_a": -np.exp(g.rng.uniform(0.0, 2.5, SSM_TIME_STEP_RANK)).astype(np.float32),
        "ssm_beta.weight": g.normal((SSM_TIME_STEP_RANK, N_EMBD), IN_STD),
        "ssm_alpha.weight": g.normal((SSM_TIME_STEP_RANK, N_EMBD), IN_STD),
        "ssm_norm.weight": g.norm(SSM_STATE_SIZE),
        "ssm_out.weight": g.normal((N_EMBD, value_dim), BRANCH_STD),
    }


def dense_ffn(g: Gen, *, branch_std: float, in_std: float = IN_STD) -> dict[str, np.ndarray]:
    return {
        "ffn_gate.weight": g.normal((N_FF, N_EMBD), in_std),
        "ffn_up.weight": g.normal((N_FF, N_EMBD), in_std),
        "ffn_down.weight": g.normal((N_EMBD, N_FF), branch_std),
    }


def moe_ffn(g: Gen, *, branch_std: float, in_std: float = IN_STD) -> dict[str, np.ndarray]:
    return {
        "ffn_gate_inp.weight": g.normal((N_EXPERT, N_EMBD), in_std),
        "ffn_gate_exps.weight": g.normal((N_EXPERT, N_FF_EXP, N_EMBD), in_std),
        "ffn_up_exps.weight": g.normal((N_EXPERT, N_FF_EXP, N_EMBD), in_std),
        "ffn_down_exps.weight": g.normal((N_EXPERT, N_EMBD, N_FF_EXP), branch_std),
        "ffn_gate_inp_shexp.weight": g.normal((N_EMBD,), 0.001),
        "ffn_gate_shexp.weight": g.normal((N_FF_SHEXP, N_EMBD), in_std),
        "ffn_up_shexp.weight": g.normal((N_FF_SHEXP, N_EMBD), in_std),
        "ffn_down_shexp.weight": g.normal((N_EMBD, N_FF_SHEXP), branch_std),
    }


def trunk_block(arch: str, seed: int, il: int) -> dict[str, np.ndarray]:
    g = Gen(seed, 10 + il)
    t = {"attn_norm.weight": g.norm(N_EMBD), "post_attention_norm.weight": g.norm(N_EMBD)}
    if (il + 1) % FULL_ATTENTION_INTERVAL == 0:
        t |= attention_block(g, branch_std=BRANCH_STD)
    else:
        t |= linear_attention_block(g)
    t |= (moe_ffn if arch == "qwen35moe" else dense_ffn)(g, branch_std=BRANCH_STD)
    return t


def eh_proj(g: Gen, R: np.ndarray, head: str) -> np.ndarray:
    """nextn.eh_proj {2*n_embd, n_embd}: [e-part | h-part] as numpy (n_embd, 2*n_embd)."""
    import numpy as np

    if head == "random":
        # Ordinary random init: the head has no idea what the trunk will say.
        return g.normal((N_EMBD, 2 * N_EMBD), _EMBED_NORM / 16.0 / np.sqrt(2 * N_EMBD))
    # e-part: R diag(d) R^T keeps every token direction (scaled by d_k); the normed embedding has
    # norm 16, so the state gets norm d_k * EMBED_NORM, like the trunk's.
    d = g.rng.uniform(0.75, 1.25, N_EMBD)
    e_part = (R * d) @ R.T * (_EMBED_NORM / 16.0)
    h_part = g.normal((N_EMBD, N_EMBD), 0.01 * _EMBED_NORM / 256.0)  # a whisper of the trunk's state
    return np.concatenate([e_part, h_part], axis=1).astype(np.float32)


def head_stds(head: str) -> tuple[float, float]:
    """(branch_std, in_std) of the MTP block's residual branches."""
    return (1.0 / 16.0, 1.0 / 16.0) if head == "random" else (BRANCH_STD, IN_STD)


def add_flip_units(ffn: dict[str, np.ndarray], prefix: str, eh: np.ndarray, R: np.ndarray,
                    vocab: TinyVocab, *, gain: float = 1.0) -> None:
    """The "mixed" head: one SiLU FFN unit per wrong token w. Gate and up fire only on w's direction
    (zero on every other token, which is orthogonal), and down adds -FLIP x the state, turning it into
    w's antipode, whose successor differs from succ(w). `prefix` names the FFN ("ffn_{}.weight");
    `gain` undoes a gate on the FFN's output (qwen35moe's shared expert: sigmoid(~0) = 0.5). An FFN
    without a gate (nemotron_h_moe: relu^2(up x)) gets relu^2 units: up gives 1 on w, 0 on any other
    token (orthogonal, or the antipode: relu cuts it), so down alone sizes the flip."""
    import numpy as np

    gate, up, down = (ffn.get(prefix.format(k)) for k in ("gate", "up", "down"))
    assert up is not None and down is not None
    act = _GATE_Z / (1.0 + np.exp(-_GATE_Z)) if gate is not None else 1.0  # silu(8) x 1, or relu(1)^2
    for u, w in enumerate(sorted(vocab.wrong)):
        v = direction(R, w)
        if gate is not None:
            gate[u] = v * (_GATE_Z / 16.0)  # the normed state of token w is 16 v
        up[u] = v / 16.0
        size = np.linalg.norm(eh[:, :N_EMBD] @ (16.0 * v))  # |state| before the FFN
        down[:, u] = -v * (_FLIP * gain * size / act)


def mtp_block(arch: str, seed: int, head: str, vocab: TinyVocab) -> dict[str, np.ndarray]:
    g = Gen(seed, 100 + HEADS.index(head))
    R = rotation(seed)
    eh = eh_proj(g, R, head)
    branch_std, in_std = head_stds(head)
    t = {
        "nextn.eh_proj.weight": eh,
        "attn_norm.weight": g.norm(N_EMBD),
        "post_attention_norm.weight": g.norm(N_EMBD),
    }
    t |= attention_block(g, branch_std=branch_std)
    moe = arch == "qwen35moe"
    ffn = (moe_ffn if moe else dense_ffn)(g, branch_std=branch_std, in_std=in_std)
    if head == "mixed":
        add_flip_units(ffn, "ffn_{}_shexp.weight" if moe else "ffn_{}.weight", eh, R, vocab,
                        gain=2.0 if moe else 1.0)
    t |= ffn
    t |= nextn_norms(g)
    return t


def nextn_norms(g: Gen) -> dict[str, np.ndarray]:
    return {
        "nextn.shared_head_norm.weight": g.norm(N_EMBD),
        "nextn.enorm.weight": g.norm(N_EMBD),
        "nextn.hnorm.weight": g.norm(N_EMBD),
    }

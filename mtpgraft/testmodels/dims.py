"""The names and sizes every tiny model is built from: architectures, heads, dtypes, and the qwen35
dimensions the other families share."""

from __future__ import annotations

ARCHES = ("qwen35", "qwen35moe")  # built by testmodels.qwen35
SPEC_ARCHES = ("glm4moe", "deepseek2", "deepseek32", "glm-dsa", "step35", "mimo2", "hy_v3", "cohere2moe", "qwen3next", "nemotron_h_moe", "bailingmoe3", "deepseek4")  # built by testmodels.family from testmodels.families.SPECS
FAMILY_ARCHES = (*ARCHES, *SPEC_ARCHES, "gemma4")  # every architecture build_tiny_model writes
HEADS = ("aligned", "mixed", "random")
DTYPES = ("f32", "f16", "bf16")

N_EMBD = 256
N_VOCAB = 512
TRUNK_LAYERS = 4
MTP_LAYERS = 1
BLOCK_COUNT = TRUNK_LAYERS + MTP_LAYERS
MTP_BLOCK = TRUNK_LAYERS  # the MTP block's index: blk.4
FULL_ATTENTION_INTERVAL = 4  # layer 3 is full attention, 0-2 are gated delta net
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = 64
N_FF = 512
N_ROT = 16  # partial rotary factor 0.25 of head_dim
ROPE_SECTIONS = (3, 3, 2, 0)  # sums to N_ROT / 2
SSM_CONV_KERNEL = 4
SSM_STATE_SIZE = 64  # head_k_dim = head_v_dim
SSM_GROUP_COUNT = 2  # key heads
SSM_TIME_STEP_RANK = 4  # value heads
SSM_INNER_SIZE = SSM_STATE_SIZE * SSM_TIME_STEP_RANK
N_EXPERT = 4
N_EXPERT_USED = 2
N_FF_EXP = 256
N_FF_SHEXP = 256
CONTEXT_LENGTH = 4096
RMS_EPS = 1e-6
ROPE_FREQ_BASE = 10_000_000.0

# How many tensors the MTP block has (blk.4.*, nextn tensors included).
MTP_TENSOR_COUNT = {"qwen35": 15, "qwen35moe": 20}

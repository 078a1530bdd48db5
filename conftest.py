"""Session-wide test settings (tests/conftest.py holds the fixtures).

llama.cpp 0c1e570's AMX matmul kernels (used through the CPU "repack" extra buffer types on CPUs with
AMX, such as this project's CI machines) crash with SIGSEGV on the tiny test models' K-quant
tensors, in a plain llama-server without any MTP. `LLAMA_ARG_REPACK=0` is llama.cpp's own switch
for `--no-repack`; every llama-server a test starts inherits it. Real models are not affected by
this setting other than speed.
"""

import os

os.environ.setdefault("LLAMA_ARG_REPACK", "0")

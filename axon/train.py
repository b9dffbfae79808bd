"""`python -m axon.train FILE [options]`: `axon train FILE [options]`, as torchrun starts it.

    torchrun --nproc-per-node 2 -m axon.train examples/mlp.axon --out runs/mlp-dp
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m axon.train examples/gpt.axon --out /shared/runs/gpt

Each process reads its rank from the environment torchrun sets (`runtime/distributed.py`); `axon train
--nproc N` starts N of these itself. See `axon/data_parallel.py`.
"""
from __future__ import annotations

import sys

from axon.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

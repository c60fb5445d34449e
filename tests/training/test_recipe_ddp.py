"""The recipe under torchrun: two gloo processes share each global batch and stay in sync."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_recipe_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_train_their_share_of_each_batch_and_stay_in_sync(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(WORKER), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # each rank trained on its half of the global batch, which is the single-process batch
    half = r0["global_labels"].shape[1] // 2
    assert torch.equal(r0["labels"], r0["global_labels"][:, :half])
    assert torch.equal(r1["labels"], r0["global_labels"][:, half:])
    # the gradients were averaged: the same weights on both ranks, and they moved
    for k, v in r0["end"].items():
        assert torch.equal(v, r1["end"][k]), k
    assert any(not torch.equal(r0["start"][k], v) for k, v in r0["end"].items())
    # rank 0 validated and wrote the checkpoint; every rank returns its history
    assert (r0["history"] == r1["history"]).all() and r0["history"][:, 0].tolist() == [2, 4]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 4

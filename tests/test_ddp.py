"""Differential attention under DDP: two CPU processes (gloo) train in lock-step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "ddp_diff_attention.py"


@pytest.mark.slow
def test_two_process_ddp_trains_diff_attention_identically_in_both_ranks(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [3, 3]
    assert all(r["implementation"] == "diffpali_diff_dup_separate" for r in ranks)
    # lambda trained, and identically in both ranks (its gradients were all-reduced too)
    assert ranks[0]["lambda"] == ranks[1]["lambda"]
    assert all(ranks[0]["lambda"][k] != v for k, v in ranks[0]["lambda_before"].items())
    for name, tensor in ranks[0]["params"].items():
        assert torch.equal(tensor, ranks[1]["params"][name]), name

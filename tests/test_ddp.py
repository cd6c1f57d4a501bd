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


PARITY = Path(__file__).parent / "scripts" / "ddp_parity.py"


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_curve_and_score_each_question_once(tmp_path):
    """Same global batch (4 = 2 x 2): the same batches, so the same loss curve; validation unpadded."""
    for devices in (1, 2):
        (tmp_path / str(devices)).mkdir()
        proc = subprocess.run([sys.executable, str(PARITY), str(tmp_path / str(devices)), str(devices)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    single = torch.load(tmp_path / "1" / "rank0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / "2" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert single["step"] == ranks[0]["step"] == ranks[1]["step"] == 4
    ddp_curve = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]
    # each rank averages its own tokens; easy-vqa answers are one word, so the means agree up to float error
    assert ddp_curve == pytest.approx(single["losses"], rel=1e-3, abs=1e-4)
    assert ranks[0]["lambda"] == ranks[1]["lambda"]
    assert all(r["implementation"] == "diffpali_diff_dup_separate" for r in ranks)
    # validation: 7 questions split 4 + 3, none twice; the synced metric counts 7 in every rank
    assert sorted(ranks[0]["val_ids"] + ranks[1]["val_ids"]) == sorted(single["val_ids"])
    assert len(ranks[0]["val_ids"]) + len(ranks[1]["val_ids"]) == 7
    assert single["val_count"] == ranks[0]["val_count"] == ranks[1]["val_count"] == 7

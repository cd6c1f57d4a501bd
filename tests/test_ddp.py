"""Differential attention under DDP: two CPU processes (gloo) train in lock-step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "ddp_diff_attention.py"


def run_ranks(script: Path, out: Path, *args: str) -> list[dict]:
    """Run a two-rank script into ``out`` and read what each rank saved."""
    proc = subprocess.run([sys.executable, str(script), str(out), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.slow
def test_two_process_ddp_trains_diff_attention_identically_in_both_ranks(tmp_path):
    ranks = run_ranks(SCRIPT, tmp_path)
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


BAD_BATCH = Path(__file__).parent / "scripts" / "ddp_bad_batch.py"


@pytest.mark.slow
def test_a_batch_unreadable_in_one_rank_is_skipped_by_every_rank_together(tmp_path):
    """Rank 1's second batch is one unreadable image: both ranks skip that step, none waits for the other."""
    ranks = run_ranks(BAD_BATCH, tmp_path)
    assert [r["skipped_records"] for r in ranks] == [0, 1]
    # 4 batches each: Lightning counts 4 steps, but the second applied no update in either rank,
    # and the learning-rate schedule did not advance on it
    assert [r["step"] for r in ranks] == [4, 4]
    assert [r["updates"] for r in ranks] == [{3}, {3}]
    assert [r["schedule_steps"] for r in ranks] == [3, 3]
    for name, tensor in ranks[0]["params"].items():
        assert torch.equal(tensor, ranks[1]["params"][name]), name

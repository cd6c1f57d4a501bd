"""The VQA accuracy Metric under 2-process DDP (gloo, CPU) equals the single-process value."""

from __future__ import annotations

import os
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from diffpali.metrics import VQAAccuracy

ANSWERS = [
    ["2"] * 10,
    ["yes"] * 7 + ["no"] * 3,
    ["two", "2", "2", "3", "2", "two", "2", "2", "2", "2"],
    ["red", "Red.", "red", "blue", "red", "red", "crimson", "red", "red", "red"],
    ["no"] * 10,
    ["1,000", "1000", "1,000", "1000", "1000", "1000", "1000", "1000", "1000", "1000"],
    ["a dog", "dog", "dog", "dogs", "dog", "the dog", "dog", "dog", "dog", "dog"],
]
PREDICTIONS = ["2", "no", "two", "red", "yes", "1000", "dog"]
TYPES = ["number", "yes/no", "number", "other", "yes/no", "number", "other"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        metric = VQAAccuracy(answer_types=("yes/no", "number", "other"))
        mine = list(range(rank, len(PREDICTIONS), world))  # uneven shards: 4 and 3 samples
        metric.update([PREDICTIONS[i] for i in mine], [ANSWERS[i] for i in mine], [TYPES[i] for i in mine])
        queue.put((rank, {k: float(v) for k, v in metric.compute().items()}))
    finally:
        dist.destroy_process_group()


def test_ddp_metric_equals_the_single_process_value():
    single = VQAAccuracy(answer_types=("yes/no", "number", "other"))
    single.update(PREDICTIONS, ANSWERS, TYPES)
    expected = {k: float(v) for k, v in single.compute().items()}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert expected["count"] == 7
    for rank in (0, 1):
        assert results[rank].keys() == expected.keys()
        for key, value in expected.items():
            assert results[rank][key] == pytest.approx(value, abs=1e-12), (rank, key)

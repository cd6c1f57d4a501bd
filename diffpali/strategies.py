"""The Lightning strategy for a :class:`~diffpali.config.TrainerConfig`: Lightning's own for ``auto``/``ddp``/...,
:class:`ShardedLoRA` (torch's FSDP2) for ``trainer.strategy=fsdp``.

FSDP2 (``fully_shard``) rather than Lightning's FSDP1 strategy: it shards each parameter on its own
(a DTensor per tensor), so LoRA matrices, a variant's float32 lambda and the frozen bf16 base share a
layer without FSDP1's one-dtype-per-flat-parameter rule or ``use_orig_params``, and it runs on CPU
(gloo) as well as on GPUs (NCCL).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

log = logging.getLogger(__name__)

#: the ``trainer.strategy`` value that selects :class:`ShardedLoRA`
FSDP = "fsdp"


def is_fsdp(strategy: str) -> bool:
    return strategy == FSDP


def shards_parameters(strategy: Any) -> bool:
    """Whether a Lightning strategy is :class:`ShardedLoRA`: every forward then needs every rank (each holds
    a shard of the weights), so evaluation runs the same number of batches and decoding steps in each."""
    return isinstance(strategy, ShardedLoRA)


def whole_model_state(strategy: Any) -> Optional[dict[str, torch.Tensor]]:
    """The module's checkpointed tensors, whole, by the wrapped model's names (``model.`` dropped), in rank 0
    (empty elsewhere; every rank must call it, the gathers are collectives); None when nothing is sharded."""
    if not shards_parameters(strategy):
        return None
    prefix = "model."
    return {k[len(prefix):]: v for k, v in strategy.lightning_module_state_dict().items() if k.startswith(prefix)}


def lightning_strategy(strategy: str) -> Union[str, "ShardedLoRA"]:
    """What ``lightning.Trainer(strategy=...)`` gets for ``trainer.strategy``."""
    return ShardedLoRA() if is_fsdp(strategy) else strategy


def layer_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards as one unit each: every decoder and encoder layer (``...layers.<i>``)."""
    units = []
    for name, module in model.named_modules():
        parts = name.rsplit(".", 2)
        if len(parts) == 3 and parts[2].isdigit() and parts[1] == "layers":
            units.append(module)
    return units


class ShardedLoRA(ModelParallelStrategy):
    """FSDP2 over every process (pure data parallelism: no tensor parallel axis).

    Sharding: each encoder and decoder layer is one ``fully_shard`` unit, then the whole model (embeddings,
    projector, norms); weights, gradients and optimiser state live 1/N in each rank, and a layer's weights
    are gathered only while it runs.

    Checkpoints: the module keeps only trainable tensors and a variant's frozen copies
    (:meth:`~diffpali.lightning_module.DiffPaliModule.checkpoint_keys`); only those are gathered, on every
    rank in the same order, and rank 0 writes them with the optimiser state through the checkpoint I/O
    (:class:`~diffpali.checkpointing.AtomicCheckpointIO`): one small ``last.ckpt``, the same layout as one
    process or DDP. Resuming reads it in every rank and puts each rank's shard back.
    """

    def __init__(self) -> None:
        super().__init__(tensor_parallel_size=1, save_distributed_checkpoint=False)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every rank in the one FSDP axis
        super().setup_environment()

    def shard(self, model: nn.Module) -> None:
        """``fully_shard`` each layer, then the root. Called from the module's ``configure_model``; idempotent
        (Lightning calls that hook again for ``trainer.test``)."""
        if isinstance(model, FSDPModule):
            return
        mesh = self.device_mesh["data_parallel"]
        units = layer_units(model)
        for unit in units:
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
        # peft's generate() reaches the inner model without calling the root's forward, whose hook would
        # gather the root's own weights (embeddings, patch embedding): hook generate too.
        register_fsdp_forward_method(model, "generate")
        params = list(model.parameters())
        sharded = sum(p.numel() for p in params if hasattr(p, "full_tensor"))
        log.info("FSDP: %d of %d parameters sharded over %d ranks, %d layer units", sharded,
                 sum(p.numel() for p in params), mesh.size(), len(units))

    def lightning_module_state_dict(self) -> dict[str, Any]:
        module = self.lightning_module
        keep = module.checkpoint_keys() if hasattr(module, "checkpoint_keys") else None
        if keep is None:
            return super().lightning_module_state_dict()
        gathered: dict[str, Any] = {}
        for key, value in module.state_dict().items():  # the same order in every rank
            if key not in keep:
                continue
            full = value.full_tensor() if hasattr(value, "full_tensor") else value  # a collective
            if self.global_rank == 0:
                gathered[key] = full.detach().cpu()
        return gathered

    def load_checkpoint(self, checkpoint_path: Any, weights_only: Optional[bool] = None) -> dict[str, Any]:
        """Lightning's FSDP2 load, which pops ``state_dict`` from what it returns; it is put back so that the
        module's ``on_load_checkpoint`` can still check the keys against the model."""
        path = Path(self.broadcast(checkpoint_path))
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["state_dict"]
        remaining = super().load_checkpoint(path, weights_only=True if weights_only is None else weights_only)
        remaining["state_dict"] = saved
        return remaining

"""The memory plan: parameters, bytes and FLOPs of a configured run from the architecture's numbers, before
anything loads (no torch, no transformers).

- :mod:`.counts`: parameters (base, what each variant adds, LoRA) and FLOPs of an architecture;
- :mod:`.memory`: the bytes per device (weights, gradients, optimiser state, activations) under single,
  DDP and FSDP, with and without activation checkpointing, and the check against the device's memory.
"""

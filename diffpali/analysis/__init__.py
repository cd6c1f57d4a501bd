"""Attention analysis: where the answer tokens look (needle cell vs distractor cells vs text), per layer
and head, for vanilla and differential PaliGemma; overlays, per-layer curves and lambda trajectories."""

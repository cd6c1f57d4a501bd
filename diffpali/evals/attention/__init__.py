"""Attention analysis (``evaluate.py eval=attention``): where the answer tokens look (needle cell vs
distractor cells vs text), per layer and head, for vanilla and differential PaliGemma.

``recorder`` runs each layer's own kernel with an eager ``attend`` that keeps the maps, ``layout``
maps cells to image tokens, ``shares`` measures and aggregates, ``plots`` draws overlays, per-layer
curves and lambda trajectories, and ``task`` ties them to MMNeedle's haystacks.
"""

"""3D self-distillation (DINOv2 / iBOT): the student's heads, the teacher's targets (centring, Sinkhorn-Knopp,
temperature schedule), the KoLeo regulariser, the EMA teacher update (and its fp32 copies for half-precision
weights), the collapse and dense-feature monitors, the two losses, and DINOv3's Gram anchoring (`gram.py`) — each a
small function or module with its formula tested on its own (`tests/objectives/test_dino_parts.py`,
`tests/objectives/test_gram.py`) — and `objective.py`, which puts them together. The multi-crop views and iBOT's
block masks are in `data/views/multicrop.py` and `data/views/masking.py`.
"""

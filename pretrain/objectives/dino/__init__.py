"""3D self-distillation (DINOv2 / iBOT) building blocks: the student's heads, the teacher's targets (centring,
Sinkhorn-Knopp, temperature schedule), the KoLeo regulariser, iBOT's 3D block masks, the EMA teacher update and
the collapse monitors. Each is a small function or module with its formula tested on its own
(`tests/objectives/test_dino_parts.py`), and the two losses; the objective that puts them together (class token,
multi-crop views, the EMA teacher callback) comes next (issue 17).
"""

"""Plain single-device PyTorch backbones and heads. No Lightning, no distributed code, no configs."""

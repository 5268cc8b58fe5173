"""Hydra config groups, shipped inside the package so an installed voxfm finds them from any directory."""

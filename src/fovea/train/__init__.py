"""Staged training: recipes, parts and stages, the accelerate loop, checkpoints with exact resume."""

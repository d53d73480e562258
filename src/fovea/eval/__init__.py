"""Evaluation: scoring functions of the published protocols (pure Python, no torch)."""

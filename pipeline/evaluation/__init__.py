"""Held-out evaluation of base models and adapters through lm-evaluation-harness."""

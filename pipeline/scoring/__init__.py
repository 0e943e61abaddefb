"""Scoring held-out text and tasks (bits-per-byte, accuracy, macro-F1) through
lm-evaluation-harness: the library `countrytune eval` and training-time evaluation share."""

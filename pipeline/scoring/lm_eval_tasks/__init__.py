"""lm-evaluation-harness task templates (`_*_yaml`) and the chrF++ metric they name
(`ct_chrf.py`), copied beside the task YAMLs `countrytune eval` writes. A package so the
metric module ships in the wheel."""

"""The software a stage ran with, as every record the project writes names it (stats.json,
run.json, provenance.json, the package manifest)."""

from __future__ import annotations

import platform
from importlib import metadata

# What each stage's numbers depend on, beyond Python and countrytune itself.
PREP = ("pyarrow", "ftfy", "fsspec", "xxhash")
TRAINING = ("torch", "transformers", "peft", "accelerate", "deepspeed", "tokenizers", "safetensors",
            "liger-kernel", "triton")
EXPORT = ("torch", "transformers", "peft", "safetensors", "tokenizers")
MODEL_IMPORT = ("transformers", "gguf", "torch", "safetensors", "tokenizers")


def software_versions(distributions: tuple[str, ...]) -> dict[str, str]:
    """{"python": ..., "countrytune": ..., each distribution: its version or "not installed"}."""
    out = {"python": platform.python_version()}
    for dist in ("countrytune", *distributions):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out

"""countrytune: a country's raw local-language corpora in, a servable LoRA adapter out."""

__version__ = "0.1.0"

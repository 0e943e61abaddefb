"""pipeline: LoRA training recipes and adapter export (see the open issues 4 to 6)."""

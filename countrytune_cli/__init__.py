"""The `countrytune` command: the top floor. It imports every stage; nothing imports it."""

from countrytune_cli.main import main

__all__ = ["main"]

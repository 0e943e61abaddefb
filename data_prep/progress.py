"""The prep progress bar: shards done per pass, documents read and their rate."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class PrepProgress:
    def __init__(self, total_shards: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.docs = 0
        self.started = time.monotonic()
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("shards · {task.fields[docs]:,} docs · {task.fields[rate]:,.0f} docs/s"),
                            TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled)
        self.task = None

    def __enter__(self) -> "PrepProgress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def start_pass(self, description: str, total: int, already_done: int) -> None:
        if self.task is not None:
            self.bar.update(self.task, visible=True)
        self.task = self.bar.add_task(description, total=total, completed=already_done,
                                      docs=self.docs, rate=0.0)

    def update(self, message: tuple[str, int]) -> None:
        kind, n = message
        if kind == "docs":
            self.docs += n
            rate = self.docs / max(time.monotonic() - self.started, 1e-6)
            self.bar.update(self.task, docs=self.docs, rate=rate)
        else:
            self.bar.advance(self.task, n)

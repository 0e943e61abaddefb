"""Rollback protection for `pull`: never silently take an older package than this machine has.

Versions are immutable, but the `latest` pointer is data the registry serves: whoever controls
the registry (or a stale mirror) can point it back at an older, signed, still-valid package with
a known flaw, and every signature check passes. So each machine keeps a record of the newest
package it accepted per package name (`$COUNTRYTUNE_STATE_DIR/pulled.json`, default
`$XDG_STATE_HOME/countrytune` or `~/.local/state/countrytune`): the manifest's `created` time
and version. A pull that resolves `latest` to a package created before the newest one recorded
is refused, naming both; a version asked for by name (`id/cpt-lora:2`) is taken, since the user
chose it, and `--allow-older` takes an older `latest` on purpose.

What it covers: `latest` moved back (or a mirror that stopped at an old version) on a machine
that has pulled a newer one. What it does not: a machine's first pull (nothing to compare with),
a registry that hides newer versions from a machine that never saw them, and, without
`--require-signature`, a forged `created` (the record is only as strong as the signature over
the manifest that carries it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from countrytune.atomic import atomic_write
from countrytune.errors import UserError

STATE_ENV = "COUNTRYTUNE_STATE_DIR"


def state_file() -> Path:
    root = os.environ.get(STATE_ENV)
    if root is None:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        root = str(Path(xdg) / "countrytune")
    return Path(root) / "pulled.json"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: the record of pulled packages is unreadable ({e}); move it "
                        f"aside to start a new one (rollback protection restarts from nothing)") from None
    return data if isinstance(data, dict) else {}


def check_not_older(package: str, version: str, created: str, *, explicit_version: bool,
                    allow_older: bool, where: str) -> None:
    """Refuse `latest` resolving to a package created before the newest this machine pulled."""
    newest = _read(state_file()).get(package)
    if not newest or explicit_version or allow_older:
        return
    if created < newest["created"]:
        raise UserError(f"{where}: the registry's latest is version {version} (created {created}), "
                        f"older than version {newest['version']} (created {newest['created']}) that "
                        f"this machine pulled before: `latest` was moved back. Pull "
                        f"{package}:{version} by name to take it on purpose, or --allow-older")


def record(package: str, version: str, created: str) -> None:
    """Remember the newest package accepted (written whole: temporary file, then rename)."""
    path = state_file()
    data = _read(path)
    if package in data and data[package]["created"] >= created:
        return
    data[package] = {"version": version, "created": created}
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True))

"""Where a country's data and models may be written: one rule, one message, for every writer.

The country profile's `storage.allowed_output_locations` lists what is allowed:

  local                      any path on this machine's disks (and a registry on loopback)
  file:///srv/countrytune/   only paths under this directory
  s3://id-national-ai/       URIs that start with this prefix (object stores, oci:// registries,
  oci://registry.id.go.id/   a self-hosted tracker's https:// URL)

Prep output, training run folders (checkpoints and trackers' files live inside them), a
self-hosted wandb server, export registries and pull targets are all checked here.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from countrytune.errors import UserError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def _is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def _on_loopback(location: str) -> bool:
    """oci://127.0.0.1:5000/ns: a registry on this machine holds data on this machine's disks."""
    return (urlsplit(location).hostname or "") in LOOPBACK_HOSTS


def _inside(path: Path, prefix: str) -> bool:
    root = Path(os.path.realpath(prefix.removeprefix("file://")))
    return path == root or root in path.parents


def location_allowed(location: str, allowed: list[str]) -> bool:
    if _is_local(location):
        path = Path(os.path.realpath(location.removeprefix("file://")))
        return "local" in allowed or any(_inside(path, a) for a in allowed if a.startswith("file://"))
    if _on_loopback(location) and "local" in allowed:
        return True
    return any(location.startswith(prefix) for prefix in allowed if "://" in prefix)


def check_location(location: str | Path, country, what: str, alternative: str = "") -> None:
    """Raise the one error a user sees when `what` would be written outside the places the
    country's profile allows (`country`: a CountryProfile, a code such as `id`, or a path).
    `alternative`: another way out, named in the message."""
    from countrytune.profiles import load_profile

    profile = load_profile(country) if isinstance(country, (str, Path)) else country
    allowed = profile.storage.allowed_output_locations
    if not location_allowed(str(location), allowed):
        raise UserError(f"{what} {location} is outside the storage locations the {profile.name} profile "
                        f"allows ({', '.join(allowed)}); write to one of them{alternative}, or change "
                        f"storage.allowed_output_locations in the profile (README: Country profiles)")

"""Where a country's data and models may be written: one rule, one message, for every writer.

The country profile's `storage.allowed_output_locations` lists what is allowed:

  local                      any path on this machine's disks (and a registry on loopback)
  file:///srv/countrytune/   only paths under this directory
  s3://id-national-ai/       URLs on the same scheme, host and port whose path starts with this
  oci://registry.id.go.id/   one's path segments (object stores, oci:// registries, a self-hosted
                             tracker's https:// URL); compared parsed, never as strings, so
                             https://wandb.id.example does not allow https://wandb.id.example.evil.test

A URL with user information (`https://name@host/`) is refused outright: what is before the @
is not the host, and credentials belong in the environment, not in a location.

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


def _has_userinfo(location: str) -> bool:
    return "@" in urlsplit(location).netloc


def _segments(path: str) -> list[str] | None:
    """A URL path's segments; None when one of them would climb (`.` or `..`)."""
    parts = [p for p in path.split("/") if p]
    return None if any(p in (".", "..") for p in parts) else parts


def _under_prefix(location: str, prefix: str) -> bool:
    """Same scheme, host and port, and the prefix's path segments lead the location's."""
    loc, pre = urlsplit(location), urlsplit(prefix)
    try:
        same_port = loc.port == pre.port
    except ValueError:  # a port that is not a number
        return False
    if (loc.scheme.lower(), (loc.hostname or "").lower()) != (pre.scheme.lower(), (pre.hostname or "").lower()):
        return False
    wanted, got = _segments(pre.path), _segments(loc.path)
    return same_port and wanted is not None and got is not None and got[:len(wanted)] == wanted


def _inside(path: Path, prefix: str) -> bool:
    root = Path(os.path.realpath(prefix.removeprefix("file://")))
    return path == root or root in path.parents


def location_allowed(location: str, allowed: list[str]) -> bool:
    if _is_local(location):
        path = Path(os.path.realpath(location.removeprefix("file://")))
        return "local" in allowed or any(_inside(path, a) for a in allowed if a.startswith("file://"))
    if _has_userinfo(location):
        return False
    if _on_loopback(location) and "local" in allowed:
        return True
    return any(_under_prefix(location, prefix) for prefix in allowed
               if "://" in prefix and not prefix.startswith("file://"))


def check_location(location: str | Path, country, what: str, alternative: str = "") -> None:
    """Raise the one error a user sees when `what` would be written outside the places the
    country's profile allows (`country`: a CountryProfile, a code such as `id`, or a path).
    `alternative`: another way out, named in the message."""
    from countrytune.profiles import load_profile

    profile = load_profile(country) if isinstance(country, (str, Path)) else country
    allowed = profile.storage.allowed_output_locations
    if not _is_local(str(location)) and _has_userinfo(str(location)):
        raise UserError(f"{what} {location}: a location with a user name or password before an @ is "
                        f"refused (the host is what follows the @); give credentials in the "
                        f"environment and the location without them")
    if not location_allowed(str(location), allowed):
        raise UserError(f"{what} {location} is outside the storage locations the {profile.name} profile "
                        f"allows ({', '.join(allowed)}); write to one of them{alternative}, or change "
                        f"storage.allowed_output_locations in the profile (README: Country profiles)")

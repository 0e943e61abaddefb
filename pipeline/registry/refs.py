"""Package references `<country>/<name>:<version>` and the names the registries accept.

Both backends use the same rules, so a package that fits the local directory registry also
fits an OCI registry: OCI repository path components must match `[a-z0-9]+([._-][a-z0-9]+)*`
and tags `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}` (OCI distribution spec, "pulling manifests").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from countrytune.errors import UserError

LATEST = "latest"
"""The movable tag: always the most recently pushed version of a package."""

_COMPONENT = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")

BASE_SUFFIX = "-base"
"""`export --as-base` pushes a country base (full weights, possibly a new vocabulary) as
`<name>-base`."""
MERGED_SUFFIX = "-merged"
"""`export --merged` pushes the full merged weights as their own package `<name>-merged`,
with the same version, so a LoRA pull never downloads full weights and vice versa."""


# A component becomes a folder name (local registry) and part of an OCI repository name (255
# characters in all, with the namespace and the country): 100 leaves room for both, and for the
# -merged and -base suffixes.
MAX_COMPONENT = 100


def check_component(value: str, what: str) -> str:
    if not _COMPONENT.match(value or ""):
        raise UserError(f"{what} {value!r} is not a valid package name component: use lower-case "
                        f"letters, digits and single '.', '_' or '-' between them (e.g. cpt-lora)")
    if len(value) > MAX_COMPONENT:
        raise UserError(f"{what} {value[:40]}... is {len(value)} characters long; use at most {MAX_COMPONENT}")
    return value


def check_version(value: str, *, allow_latest: bool = False) -> str:
    if not _VERSION.match(value or ""):
        raise UserError(f"version {value!r} is not valid: use letters, digits, '.', '_' or '-', "
                        f"at most 128 characters, not starting with '.' or '-' (e.g. 2026.11.28 or v1)")
    if value == LATEST and not allow_latest:
        raise UserError(f"version {LATEST!r} is reserved for the movable tag; pick a real version")
    return value


@dataclass(frozen=True)
class Ref:
    """A package in a registry; `version` None means "not given" (pull resolves `latest`)."""

    country: str
    name: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        out = self.country + (f"/{self.name}" if self.name else "")
        return out + (f":{self.version}" if self.version else "")

    @property
    def package(self) -> str:
        return f"{self.country}/{self.name}"


def parse_ref(text: str) -> Ref:
    """Parse `country[/name][:version]`; names are checked, not resolved."""
    head, _, version = text.strip().partition(":")
    country, _, name = head.partition("/")
    if "/" in name:
        raise UserError(f"reference {text!r}: expected country[/name][:version], e.g. id/cpt-lora:1.0")
    check_component(country, "country")
    if name:
        check_component(name, "package name")
    if version:
        check_version(version, allow_latest=True)
    return Ref(country, name or None, version or None)

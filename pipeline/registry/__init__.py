"""Where packages live: one small interface, a local directory and an OCI registry behind it.

Entries are immutable `<country>/<name>:<version>`, plus a movable `latest`. A backend
must make a push all-or-nothing (readers never see a half-written entry) and refuse a
version that exists. Verification is not the backend's job: `pull` checks every byte
against the manifest whatever the backend says.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from countrytune.errors import UserError
from pipeline.registry.refs import LATEST, Ref, check_version

DEFAULT_REGISTRY = "./registry"
REGISTRY_ENV = "COUNTRYTUNE_REGISTRY"


@dataclass
class PackageEntry:
    """One package (`country/name`) and its versions, for `list`."""

    country: str
    name: str
    versions: list[str] = field(default_factory=list)
    latest: str | None = None


class Registry(ABC):
    """A store of packages. `ref`s given to the methods below are complete (country, name, version)."""

    uri: str

    @abstractmethod
    def exists(self, ref: Ref) -> bool:
        """Whether that version (or tag) of the package is stored."""

    @abstractmethod
    def push(self, package_dir: Path, ref: Ref) -> None:
        """Store the directory as `ref` and move `latest` to it; UserError if the version exists."""

    @abstractmethod
    def latest_version(self, package: Ref) -> str | None:
        """The version `latest` points at (None: nothing pushed)."""

    @abstractmethod
    def read_manifest(self, ref: Ref) -> bytes:
        """The stored manifest.json bytes."""

    @abstractmethod
    def stored_files(self, ref: Ref) -> list[str]:
        """Every file name the stored entry holds, manifest.json included, as the store names
        them (not sanitised: `pull` checks them)."""

    @abstractmethod
    def open_file(self, ref: Ref, path: str) -> AbstractContextManager[BinaryIO]:
        """A binary stream of one stored file."""

    @abstractmethod
    def packages(self, country: str | None = None) -> Iterator[PackageEntry]:
        """Every package (optionally of one country) with its versions."""

    def versions(self, package: Ref) -> PackageEntry | None:
        """One package (`country/name`) and its versions; None when nothing is pushed. Backends
        that can answer it without listing everything override it."""
        return next((p for p in self.packages(package.country) if p.name == package.name), None)

    def resolve(self, ref: Ref) -> Ref:
        """Fill in a missing name (the country's only package) and version (`latest`)."""
        name = ref.name
        if name is None:
            names = sorted(p.name for p in self.packages(ref.country))
            if len(names) != 1:
                found = ", ".join(f"{ref.country}/{n}" for n in names) or "none"
                raise UserError(f"{ref}: name the package ({'found ' + found if names else 'nothing pushed for ' + ref.country} "
                                f"in {self.uri})")
            name = names[0]
        version = ref.version
        if version in (None, LATEST):
            version = self.latest_version(Ref(ref.country, name))
            if version is None:
                raise UserError(f"{ref.country}/{name}: nothing pushed to {self.uri}")
            try:  # the pointer is data from the registry: a path in it must never be followed
                check_version(version)
            except UserError:
                raise UserError(f"{ref.country}/{name}: the registry's {LATEST} pointer holds {version!r}, "
                                f"which is not a version; the registry was tampered with (pull a version "
                                f"by name, and repair {LATEST})") from None
        full = Ref(ref.country, name, version)
        if not self.exists(full):
            raise UserError(f"{full}: no such version in {self.uri}; `countrytune list "
                            f"--registry {self.uri} {ref.country}` shows what is there")
        return full


def open_registry(uri: str | None = None, *, insecure: bool = False) -> Registry:
    """`oci://host[:port]/namespace`, `file:///path`, a plain path, or None for the default
    (`$COUNTRYTUNE_REGISTRY`, else ./registry)."""
    uri = uri or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY
    if uri.startswith("oci://"):
        from pipeline.registry.oci import OciRegistry

        return OciRegistry(uri, insecure=insecure)
    if "://" in uri and not uri.startswith("file://"):
        raise UserError(f"registry {uri!r}: use oci://host:port/namespace, file:///path or a directory")
    from pipeline.registry.local import LocalRegistry

    return LocalRegistry(uri.removeprefix("file://"))

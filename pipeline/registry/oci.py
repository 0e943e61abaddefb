"""Packages as OCI artifacts, spoken to with the OCI distribution API over urllib.

One package version = one OCI image manifest in repository `<namespace>/<country>/<name>`,
tagged with its version and `latest`, in the CNCF ModelPack layout (modelpack.py has the
mapping and the spec's source files):
  artifactType  application/vnd.cncf.model.manifest.v1+json
  config        application/vnd.cncf.model.config.v1+json: a ModelPack model config built from
                manifest.json (name, version, createdAt, licence; format, precision, size from
                the weights; modelfs.diffIds = the layers' digests)
  layers        one uncompressed blob per file, typed by its role: weight.v1.raw, weight.config.v1.raw
                (config, tokenizer, adapter_config.json), code.v1.raw, doc.v1.raw (README,
                licences, manifest.json, model.sig or a legacy manifest.sig); named by org.opencontainers.image.title
                and org.cncf.model.filepath
  annotations   version, creation, package, push id, io.countrytune.kind (lora|merged|base)
Why this layout: it is what model tooling reads: ModelPack clients (modctl, the Kubernetes
image-volume path) find files by org.cncf.model.filepath, catalogues read the config, and `oras
pull` still writes every titled layer out as a file. The config carries its own type (not the
artifact type in an empty config, as OCI 1.1's artifact guidance allows), so registries older
than OCI 1.1, which ignore artifactType (distribution 2.8, the tests' registry), still show what
it is. Packages pushed before this layout (artifactType and config type
application/vnd.countrytune.adapter.v1+json, layers application/octet-stream, manifest.json as
application/vnd.countrytune.manifest.v1+json) are read as before; anything else is refused.

Why urllib and not the `oras` package: the protocol we need is six requests (HEAD/GET
manifest, HEAD/POST/PUT blob, PUT manifest, tags/list); doing them ourselves keeps `pull`
free of a registry client for slim serving images, lets every layer stream through our own hash
check, and gives exact control of the "tag exists? refuse" and "manifest last" ordering.

Immutability: push checks the version tag with HEAD and refuses an existing one; blobs go
first and the manifest last, so a crashed push leaves only unreferenced blobs, never a tag.
The distribution API has no conditional tag write, so two pushes can race past the HEAD check.
Each push's manifest carries a unique push id (two exports of one run in the same second used
to produce byte-identical manifests, the read-back could not tell them apart, and both
reported success); the tag is checked again just before the manifest goes up, and read back
after it and once more after TAG_SETTLE_S, so of two racing pushes one is told it lost and
only the winner moves `latest`. What remains: a racing manifest PUT that takes longer than
TAG_SETTLE_S to land. Registries with immutable tags (Harbor, ECR, GHCR rules) close it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import time
import urllib.error
import uuid
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from countrytune.errors import UserError
from countrytune.artifacts.manifest import MANIFEST_NAME, Manifest, read_manifest, sha256_file
from pipeline.registry import modelpack
from pipeline.registry.refs import LATEST, Ref, check_component
from pipeline.registry import PackageEntry, Registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = modelpack.ARTIFACT_TYPE
CONFIG_TYPE = modelpack.CONFIG_TYPE
LEGACY_ARTIFACT_TYPE = "application/vnd.countrytune.adapter.v1+json"
"""What packages were pushed as before the ModelPack layout (artifact and config type alike;
layers application/octet-stream, manifest.json application/vnd.countrytune.manifest.v1+json)."""
ARTIFACT_TYPES = (ARTIFACT_TYPE, LEGACY_ARTIFACT_TYPE)
CONFIG_TYPES = (CONFIG_TYPE, LEGACY_ARTIFACT_TYPE)
TITLE = "org.opencontainers.image.title"
VERSION = "org.opencontainers.image.version"
KIND = "io.countrytune.kind"
LANGUAGES = "io.countrytune.languages"
"""ISO 639-3 codes, comma-separated (the ModelPack config takes ISO 639-1 only)."""
USER_ENV, PASSWORD_ENV = "COUNTRYTUNE_REGISTRY_USERNAME", "COUNTRYTUNE_REGISTRY_PASSWORD"
PLAIN_HTTP_CREDENTIALS_ENV = "COUNTRYTUNE_REGISTRY_PLAIN_HTTP_CREDENTIALS"
"""Set to 1 to send credentials over plain http to a non-loopback host (they can be read
by anyone on the path); refused otherwise."""
TIMEOUT_S = 60  # per request; a blob PUT streams, so this bounds stalls, not transfer time
TAG_SETTLE_S = 1.0
"""How long a pushed version tag must stay ours before the push counts as won (a racing
manifest PUT takes milliseconds on a LAN; bench/faults.py raced 2 exports x 5 rounds)."""
PUSH_ID = "io.countrytune.push-id"
READ_RETRIES = 3


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str]:
    """(scheme, host:port) with the default port made explicit: what credentials are bound to."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, f"{(parts.hostname or '').lower()}:{port}"


class _NoCredentialsAcrossOrigins(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never carry the registry's credentials to another origin: blob
    downloads are redirected to CDNs and presigned object-store URLs, which reject a foreign
    Authorization header, and must not see the registry's token anyway; and a redirect from
    https to http on the same host would put them on the wire in the clear. (urllib copies
    every header to the redirected request.)"""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_NoCredentialsAcrossOrigins)


def _check_credentials_may_go_to(url: str, registry: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or _is_loopback(parts.hostname or ""):
        return
    if os.environ.get(PLAIN_HTTP_CREDENTIALS_ENV) == "1":
        return
    raise UserError(f"registry {registry}: refusing to send credentials over plain http to {parts.netloc}, "
                    f"where anyone on the path can read them; serve the registry (and its token "
                    f"service) over https, or set {PLAIN_HTTP_CREDENTIALS_ENV}=1 to send them anyway")


class OciRegistry(Registry):
    def __init__(self, uri: str, *, insecure: bool = False) -> None:
        parsed = urllib.parse.urlsplit(uri)
        if not parsed.hostname:
            raise UserError(f"registry {uri!r}: expected oci://host[:port]/namespace")
        if "@" in parsed.netloc:
            raise UserError(f"registry {uri!r}: no user name or password in the URI (the host is what "
                            f"follows the @); set {USER_ENV} and {PASSWORD_ENV} instead")
        self.uri = uri
        self.namespace = parsed.path.strip("/")
        for part in filter(None, self.namespace.split("/")):
            check_component(part, "registry namespace")
        # Plain http only where nothing can listen in: loopback, or when asked explicitly.
        scheme = "http" if insecure or _is_loopback(parsed.hostname) else "https"
        self.base = f"{scheme}://{parsed.netloc}"
        self._auth: str | None = None
        self._manifests: dict[str, dict] = {}

    # --- HTTP -----------------------------------------------------------------------------

    def _request(self, method: str, url: str, *, body: bytes | Path | None = None,
                 headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200,),
                 stream: bool = False) -> tuple[int, Any, bytes | Any]:
        """One request, retried once with credentials after a 401 challenge, and a GET or HEAD
        up to READ_RETRIES more times after a 5xx. Returns (status, headers, body bytes or,
        with stream=True, the open response)."""
        url = urllib.parse.urljoin(self.base, url)
        # The server hands back URLs (an upload's Location, a catalog page's Link) that may name
        # any host: the registry's credentials go with a request only to the registry's own
        # origin (scheme, host and port), never elsewhere, and no login is tried elsewhere.
        ours = _origin(url) == _origin(self.base)
        server_errors = 0
        attempt = 0
        while attempt < 2:
            hdrs = dict(headers or {})
            if self._auth and ours:
                hdrs["Authorization"] = self._auth
            data: Any = body
            if isinstance(body, Path):
                data = body.open("rb")
                hdrs["Content-Length"] = str(body.stat().st_size)
            req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
            try:
                resp = _OPENER.open(req, timeout=TIMEOUT_S)
                status = resp.status
            except urllib.error.HTTPError as e:
                resp, status = e, e.code
            except urllib.error.URLError as e:
                raise UserError(f"registry {self.uri}: cannot reach {self.base} ({e.reason})") from None
            finally:
                if isinstance(body, Path):
                    data.close()
            if status == 401 and attempt == 0 and ours and self._login(resp.headers.get("WWW-Authenticate", "")):
                resp.close()
                attempt += 1
                continue
            if status >= 500 and method in ("GET", "HEAD") and server_errors < READ_RETRIES:
                # distribution 2.8 answered HEAD of a tag with 500 while another push's PUT of
                # that tag was landing (bench/faults.py); a read is safe to repeat.
                resp.close()
                server_errors += 1
                time.sleep(0.2 * server_errors)
                continue
            if status not in ok:
                detail = resp.read(2000).decode("utf-8", "replace").strip()
                resp.close()
                if status == 401:
                    detail += (f" (credentials refused: check {USER_ENV} and {PASSWORD_ENV})"
                               if os.environ.get(USER_ENV) else
                               f" (the registry asks for credentials: set {USER_ENV} and {PASSWORD_ENV})")
                raise RegistryHttpError(status, f"registry {self.uri}: {method} {url} answered "
                                                f"{status}: {detail or '(no body)'}")
            if stream:
                return status, resp.headers, resp
            with resp:
                return status, resp.headers, resp.read()
        raise AssertionError("unreachable")

    def _login(self, challenge: str) -> bool:
        """Answer a Basic or Bearer (token service) challenge with env credentials."""
        user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
        basic = ("Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()) if user else None
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic":
            if basic is None:
                return False
            _check_credentials_may_go_to(self.base, self.uri)
            self._auth = basic
            return True
        if scheme.lower() != "bearer":
            return False
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        _check_credentials_may_go_to(self.base, self.uri)  # the token travels there
        if basic is not None:
            _check_credentials_may_go_to(fields.get("realm", ""), self.uri)
        query = urllib.parse.urlencode({k: v for k, v in fields.items() if k in ("service", "scope")})
        req = urllib.request.Request(f"{fields.get('realm', '')}?{query}",
                                     headers={"Authorization": basic} if basic else {})
        try:
            with _OPENER.open(req, timeout=TIMEOUT_S) as resp:
                token = json.loads(resp.read())
        except (urllib.error.URLError, ValueError) as e:
            raise UserError(f"registry {self.uri}: login failed ({e}); set {USER_ENV} and "
                            f"{PASSWORD_ENV}") from None
        self._auth = "Bearer " + (token.get("token") or token.get("access_token", ""))
        return True

    # --- helpers --------------------------------------------------------------------------

    def _repo(self, ref: Ref) -> str:
        return "/".join(filter(None, [self.namespace, ref.country, ref.name]))

    def _manifest_url(self, ref: Ref, tag: str | None = None) -> str:
        return f"/v2/{self._repo(ref)}/manifests/{tag or ref.version}"

    def _head_digest(self, ref: Ref, tag: str | None = None) -> str | None:
        try:
            _, headers, _ = self._request("HEAD", self._manifest_url(ref, tag),
                                          headers={"Accept": OCI_MANIFEST})
        except RegistryHttpError as e:
            if e.status == 404:
                return None
            raise
        return headers.get("Docker-Content-Digest")

    def _oci_manifest(self, ref: Ref, tag: str | None = None) -> dict:
        key = f"{self._repo(ref)}:{tag or ref.version}"
        if key not in self._manifests:
            _, _, raw = self._request("GET", self._manifest_url(ref, tag), headers={"Accept": OCI_MANIFEST})
            data = json.loads(raw)
            found = _package_type(data)
            if found not in ARTIFACT_TYPES:
                raise UserError(f"{ref}: {self._repo(ref)} in {self.uri} is not a countrytune package "
                                f"(its artifact type is {found!r}; countrytune pushes {ARTIFACT_TYPE}, "
                                f"and {LEGACY_ARTIFACT_TYPE} before)")
            self._manifests[key] = data
        return self._manifests[key]

    def _upload_blob(self, ref: Ref, digest: str, body: bytes | Path) -> None:
        repo = self._repo(ref)
        try:
            self._request("HEAD", f"/v2/{repo}/blobs/{digest}")
            return  # content-addressed: already there (an earlier version, or a crashed push)
        except RegistryHttpError as e:
            if e.status != 404:
                raise
        _, headers, _ = self._request("POST", f"/v2/{repo}/blobs/uploads/", ok=(202,))
        location = headers["Location"]
        sep = "&" if "?" in location else "?"
        self._request("PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}", body=body,
                      headers={"Content-Type": "application/octet-stream"}, ok=(201,))

    # --- Registry -------------------------------------------------------------------------

    def exists(self, ref: Ref) -> bool:
        return self._head_digest(ref) is not None

    def push(self, package_dir: Path, ref: Ref) -> None:
        if self.exists(ref):
            raise UserError(f"{ref} already exists in {self.uri}; versions are immutable: push a new version")
        package = _package_manifest(package_dir)
        layers = []
        for path in sorted(p for p in package_dir.rglob("*") if p.is_file()):
            title = path.relative_to(package_dir).as_posix()
            digest = "sha256:" + sha256_file(path)
            self._upload_blob(ref, digest, path)
            layers.append({"mediaType": modelpack.layer_type(title)[0], "digest": digest,
                           "size": path.stat().st_size, "annotations": modelpack.layer_annotations(title, TITLE)})
        if not layers:
            raise UserError(f"{package_dir}: no files to push")
        config = modelpack.model_config(package_dir, package, name=ref.package, version=ref.version,
                                        diff_ids=[layer["digest"] for layer in layers])
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        self._upload_blob(ref, config_digest, config)
        annotations = {VERSION: ref.version, "org.opencontainers.image.ref.name": ref.version,
                       "org.opencontainers.image.created":
                           dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "io.countrytune.package": ref.package, PUSH_ID: uuid.uuid4().hex}
        if package is not None:
            annotations |= {KIND: package.kind, LANGUAGES: ",".join(package.languages)}
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
            "layers": layers, "annotations": annotations,
        }
        raw = json.dumps(manifest, indent=1).encode("utf-8")
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        headers = {"Content-Type": OCI_MANIFEST}
        lost = UserError(f"{ref} was pushed to {self.uri} by someone else at the same time and "
                         f"theirs holds the tag; versions are immutable: push a new version")
        if self.exists(ref):  # the uploads took a while: someone may have finished meanwhile
            raise lost
        self._request("PUT", self._manifest_url(ref), body=raw, headers=headers, ok=(201,))
        if self._head_digest(ref) != digest:
            raise lost
        time.sleep(TAG_SETTLE_S)  # a racing PUT that passed the check above lands after ours
        if self._head_digest(ref) != digest:
            raise lost
        self._request("PUT", self._manifest_url(ref, LATEST), body=raw, headers=headers, ok=(201,))

    def latest_version(self, package: Ref) -> str | None:
        try:
            manifest = self._oci_manifest(package, LATEST)
        except RegistryHttpError as e:
            if e.status == 404:
                return None
            raise
        return manifest.get("annotations", {}).get(VERSION)

    def stored_files(self, ref: Ref) -> list[str]:
        titles = []
        for layer in self._oci_manifest(ref).get("layers", []):
            title = _file_path(layer)
            if not title:
                raise UserError(f"{ref}: layer {layer.get('digest')} has no {TITLE} or "
                                f"{modelpack.FILEPATH} annotation; not a countrytune package")
            titles.append(title)
        return titles

    def _layer(self, ref: Ref, path: str) -> dict:
        for layer in self._oci_manifest(ref).get("layers", []):
            if _file_path(layer) == path:
                return layer
        raise UserError(f"{ref}: the package has no file {path!r}")

    def read_manifest(self, ref: Ref) -> bytes:
        if MANIFEST_NAME not in self.stored_files(ref):
            raise UserError(f"{ref}: {self._repo(ref)} in {self.uri} is a model artifact without "
                            f"{MANIFEST_NAME}, not a countrytune package (pull it with oras or modctl)")
        with self.open_file(ref, MANIFEST_NAME) as f:
            return f.read(64 << 20)  # a manifest is kilobytes; never read an unbounded blob

    def open_file(self, ref: Ref, path: str) -> BinaryIO:
        layer = self._layer(ref, path)
        _, _, resp = self._request("GET", f"/v2/{self._repo(ref)}/blobs/{layer['digest']}", stream=True)
        return resp

    def versions(self, package: Ref) -> PackageEntry | None:
        """One package's versions from its tags: no catalog needed."""
        try:
            _, _, raw = self._request("GET", f"/v2/{self._repo(package)}/tags/list")
        except RegistryHttpError as e:
            if e.status == 404:
                return None
            raise
        versions = sorted(t for t in (json.loads(raw).get("tags") or []) if t != LATEST)
        if not versions:
            return None
        return PackageEntry(package.country, package.name, versions, self.latest_version(package))

    def packages(self, country: str | None = None) -> Iterator[PackageEntry]:
        prefix = f"{self.namespace}/" if self.namespace else ""
        try:
            repos = list(self._catalog())
        except RegistryHttpError as e:
            if e.status not in (401, 403, 404, 405):
                raise
            who = country or "COUNTRY"
            raise UserError(f"registry {self.uri} does not list its repositories (GET /v2/_catalog "
                            f"answered {e.status}, as on GHCR, Docker Hub and ECR): name the package, "
                            f"e.g. `countrytune list {who}/NAME` or `countrytune pull {who}/NAME`") from None
        for repo in repos:
            if not repo.startswith(prefix):
                continue
            parts = repo[len(prefix):].split("/")
            if len(parts) != 2 or (country and parts[0] != country):
                continue
            entry = self.versions(Ref(parts[0], parts[1]))
            if entry is not None:
                yield entry

    def _catalog(self) -> Iterator[str]:
        url: str | None = "/v2/_catalog?n=1000"
        while url:
            _, headers, raw = self._request("GET", url)
            yield from json.loads(raw).get("repositories") or []
            link = re.match(r"<([^>]+)>;\s*rel=\"?next\"?", headers.get("Link", ""))
            url = link.group(1) if link else None


def _package_type(data: Any) -> str | None:
    """The artifact type of a stored manifest; from its config's type where a client or a
    registry older than OCI 1.1 left artifactType out."""
    if not isinstance(data, dict):
        return None
    if "artifactType" in data:
        return data["artifactType"]
    config = data.get("config")
    config_type = config.get("mediaType") if isinstance(config, dict) else None
    return ARTIFACT_TYPES[CONFIG_TYPES.index(config_type)] if config_type in CONFIG_TYPES else config_type


def _package_manifest(package_dir: Path) -> Manifest | None:
    """The folder's manifest.json, which the ModelPack config describes; None for a folder without one
    (the registry stores any folder; export always writes one)."""
    return read_manifest(package_dir) if (package_dir / MANIFEST_NAME).is_file() else None


def _file_path(layer: Any) -> str | None:
    """A layer's path in the package: its title (ORAS, and every countrytune push), else its
    ModelPack file path."""
    annotations = layer.get("annotations") if isinstance(layer, dict) else None
    if not isinstance(annotations, dict):
        return None
    return annotations.get(TITLE) or annotations.get(modelpack.FILEPATH)


class RegistryHttpError(UserError):
    """An unexpected HTTP status from the registry (still a UserError: usually config or auth)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

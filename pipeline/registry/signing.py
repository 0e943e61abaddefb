"""Signed packages: the manifest hashes every file, and an ed25519 signature over the manifest
proves who made it. Without one, anyone who can write to the registry can change a file and its
hash together; with one, `pull --require-signature KEY` and `verify --public-key KEY` refuse it.

    countrytune keys generate --out keys/id-programme     # once; keep the .key file offline
    countrytune export RUN --registry R --version 1 --sign-key keys/id-programme/countrytune-signing.key
    countrytune pull id/cpt-lora:1 --registry R --to pkg --require-signature keys/id-programme/countrytune-signing.pub

The signature travels as `manifest.sig` beside `manifest.json` (JSON: algorithm, key id,
base64 signature of the manifest's exact bytes). Keys are PEM files (PKCS#8 private,
SubjectPublicKeyInfo public), readable by openssl; a private key may be encrypted with a
passphrase given in $COUNTRYTUNE_SIGNING_KEY_PASSPHRASE.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
from pathlib import Path

from countrytune.artifacts.manifest import MANIFEST_NAME
from countrytune.errors import UserError

SIGNATURE_NAME = "manifest.sig"
MAX_SIGNATURE_BYTES = 4096
FORMAT = "countrytune-ed25519-v1"
PRIVATE_NAME, PUBLIC_NAME = "countrytune-signing.key", "countrytune-signing.pub"
PASSPHRASE_ENV = "COUNTRYTUNE_SIGNING_KEY_PASSPHRASE"
KEY_ENV = "COUNTRYTUNE_SIGNING_KEY"


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise UserError("signing needs the cryptography package: pip install cryptography") from None
    return serialization, ed25519


def key_id(public_key) -> str:
    """Short fingerprint of a public key: SHA-256 of its 32 raw bytes, first 16 hex digits."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(out_dir: Path) -> tuple[Path, Path]:
    """A new ed25519 key pair in `out_dir` (refuses to overwrite one); the private file is 0600."""
    serialization, ed25519 = _crypto()
    private, public = out_dir / PRIVATE_NAME, out_dir / PUBLIC_NAME
    if private.exists() or public.exists():
        raise UserError(f"{out_dir} already holds a signing key; a key is never overwritten")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    passphrase = os.environ.get(PASSPHRASE_ENV)
    encryption = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                  else serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_private_key(path: Path | str):
    serialization, ed25519 = _crypto()
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"signing key {path}: {e.strerror}") from None
    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(data, passphrase.encode() if passphrase else None)
    except (ValueError, TypeError) as e:
        raise UserError(f"signing key {path}: not a readable PEM private key ({e}); an encrypted key "
                        f"needs ${PASSPHRASE_ENV}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UserError(f"signing key {path}: {type(key).__name__}, not ed25519; make one with "
                        f"`countrytune keys generate`")
    return key


def load_public_key(path: Path | str):
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as e:
        raise UserError(f"public key {path}: {e.strerror}") from None
    except ValueError as e:
        raise UserError(f"public key {path}: not a PEM public key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise UserError(f"public key {path}: {type(key).__name__}, not ed25519")
    return key


def sign_manifest(manifest_bytes: bytes, private_key) -> bytes:
    """The manifest.sig bytes for these exact manifest bytes."""
    record = {"format": FORMAT, "algorithm": "ed25519", "key_id": key_id(private_key.public_key()),
              "signed_file": MANIFEST_NAME, "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
              "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii")}
    return (json.dumps(record, indent=2) + "\n").encode("utf-8")


def check_signature(manifest_bytes: bytes, signature: bytes | None, public_key, where: str) -> str:
    """Return the signer's key id when `signature` is a valid signature of `manifest_bytes` by
    `public_key`; raise a UserError saying which check failed otherwise."""
    from cryptography.exceptions import InvalidSignature

    expected = key_id(public_key)
    if signature is None:
        raise UserError(f"{where}: the package is not signed ({SIGNATURE_NAME} missing), and a "
                        f"signature by key {expected} is required; refusing it")
    try:
        record = json.loads(signature)
        sig = base64.b64decode(record["signature"], validate=True)
        signer = str(record["key_id"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{where}: {SIGNATURE_NAME} is not a countrytune signature; refusing the package") from None
    if record.get("algorithm") != "ed25519":
        raise UserError(f"{where}: {SIGNATURE_NAME} uses {record.get('algorithm')!r}, not ed25519; refusing")
    if signer != expected:
        raise UserError(f"{where}: signed by key {signer}, not by the required key {expected}; refusing")
    try:
        public_key.verify(sig, manifest_bytes)
    except InvalidSignature:
        raise UserError(f"{where}: the signature does not match manifest.json: the manifest was changed "
                        f"after it was signed (by key {expected}); refusing the package") from None
    return expected


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="make the ed25519 key pair that signs exported packages",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    keys = p.add_subparsers(dest="keys_command", required=True)
    g = keys.add_parser("generate", help="write a new key pair into a folder")
    g.add_argument("--out", type=Path, required=True, help="folder for countrytune-signing.key/.pub")
    g.set_defaults(run=_run_generate)
    s = keys.add_parser("show", help="print the key id of a public or private key file")
    s.add_argument("key", type=Path)
    s.set_defaults(run=_run_show)


def _run_generate(args: argparse.Namespace) -> int:
    private, public = generate_key(args.out)
    print(f"key {key_id(load_public_key(public))}: private {private} (keep it with the programme, never in "
          f"a registry), public {public} (give it to whoever pulls)")
    return 0


def _run_show(args: argparse.Namespace) -> int:
    text = args.key.read_bytes() if args.key.is_file() else b""
    key = load_private_key(args.key).public_key() if b"PRIVATE KEY" in text else load_public_key(args.key)
    print(key_id(key))
    return 0

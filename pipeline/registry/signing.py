"""Signed packages, in the OpenSSF model-signing format: the manifest hashes every file, and a
signature over every file (the manifest included) proves who made them. Without one, anyone
who can write to the registry can change a file and its hash together; with one,
`pull --require-signature KEY` and `verify --public-key KEY` refuse it.

    countrytune keys generate --out keys/id-programme     # once; keep the .key file offline
    countrytune export RUN --registry R --version 1 --sign-key keys/id-programme/countrytune-signing.key
    countrytune pull id/cpt-lora:1 --registry R --to pkg --require-signature keys/id-programme/countrytune-signing.pub
    model_signing verify key pkg --signature pkg/model.sig --public_key keys/id-programme/countrytune-signing.pub

The signature is `model.sig` beside `manifest.json`: a Sigstore bundle (a DSSE envelope around
an in-toto statement listing every file of the package with its SHA-256, `model.sig` itself
excluded) made by model-signing's key signer (PyPI `model-signing`, sigstore/model-transparency),
so the stock `model_signing verify key` checks a pulled package without countrytune. Key flow
only: no Sigstore/OIDC identity, no transparency log, no network. Keys are ECDSA P-256 PEM files
(PKCS#8 private, SubjectPublicKeyInfo public), readable by openssl: model-signing's key signer
takes NIST P-256/384/521 keys only, not ed25519. A private key may be encrypted with a
passphrase given in $COUNTRYTUNE_SIGNING_KEY_PASSPHRASE. A key id is the first 16 hex digits of
the SHA-256 of the public key's PEM, the start of the key hint model-signing writes in the bundle.

Legacy: countrytune before model-signing wrote `manifest.sig`, an ed25519 signature of
manifest.json's bytes (the manifest hashes every other file). Those packages are still
verified, read-only, by `_legacy_check` when given the old ed25519 public key; nothing signs
that way any more. Refusing them would gain nothing (the old format is sound: pull checks every
file against the signed manifest and refuses unlisted files) and would break every deployment
that pins an already-published version, which cannot be re-signed under its own number because
registry versions are immutable. Given the other kind of key, either format says which key it
needs and how to re-export.
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
from countrytune.hashing import sha256_file

SIGNATURE_NAME = "model.sig"  # model-signing's default name
LEGACY_SIGNATURE_NAME = "manifest.sig"  # countrytune's ed25519 format, verified only
SIGNATURE_NAMES = (SIGNATURE_NAME, LEGACY_SIGNATURE_NAME)
# A bundle grows ~270 bytes per signed file (name, algorithm, digest, then base64): 1 MiB is
# ~3,800 files, far above any package, and bounds what pull reads before checking.
MAX_SIGNATURE_BYTES = 1 << 20
CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what model-signing's key signer accepts
PRIVATE_NAME, PUBLIC_NAME = "countrytune-signing.key", "countrytune-signing.pub"
PASSPHRASE_ENV = "COUNTRYTUNE_SIGNING_KEY_PASSPHRASE"
KEY_ENV = "COUNTRYTUNE_SIGNING_KEY"


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    except ImportError:
        raise UserError("signing needs the cryptography package: pip install cryptography") from None
    return serialization, ec, ed25519


def _model_signing():
    try:
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError as e:  # model-signing 1.1.1 imports OpenSSL (pyopenssl) without declaring it
        raise UserError(f"signing needs model-signing ({e}): pip install 'model-signing>=1.1.1,<1.2' "
                        f"pyopenssl") from None
    return model_signing


def _hashing_config():
    """Every file but the signature, git-looking names included (model-signing skips .git* by default)."""
    return _model_signing().hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=False)


def _passphrase() -> bytes | None:
    # bytes: model-signing 1.1.1 hints `password: str` but hands it to cryptography, which needs bytes
    passphrase = os.environ.get(PASSPHRASE_ENV)
    return passphrase.encode() if passphrase else None


def key_id(public_key) -> str:
    """Short fingerprint: SHA-256 of the PEM public key (model-signing's key hint), 16 hex digits;
    for a legacy ed25519 key, SHA-256 of its 32 raw bytes, as countrytune printed it before."""
    serialization, _, ed25519 = _crypto()
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(out_dir: Path) -> tuple[Path, Path]:
    """A new ECDSA P-256 key pair in `out_dir` (refuses to overwrite one); the private file is 0600."""
    serialization, ec, _ = _crypto()
    private, public = out_dir / PRIVATE_NAME, out_dir / PUBLIC_NAME
    if private.exists() or public.exists():
        raise UserError(f"{out_dir} already holds a signing key; a key is never overwritten")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    passphrase = _passphrase()
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _read_private_key(path: Path | str):
    serialization, _, _ = _crypto()
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"signing key {path}: {e.strerror}") from None
    try:
        return serialization.load_pem_private_key(data, _passphrase())
    except (ValueError, TypeError) as e:
        raise UserError(f"signing key {path}: not a readable PEM private key ({e}); an encrypted key "
                        f"needs ${PASSPHRASE_ENV}") from None


def _check_curve(key, path, what: str) -> None:
    _, ec, ed25519 = _crypto()
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        raise UserError(f"{what} {path}: an ed25519 key of countrytune's old signature format; "
                        f"model-signing signs with ECDSA: make a new key with `countrytune keys generate`")
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) or key.curve.name not in CURVES:
        name = key.curve.name if hasattr(key, "curve") else type(key).__name__
        raise UserError(f"{what} {path}: {name}, not an ECDSA P-256/384/521 key; make one with "
                        f"`countrytune keys generate`")


def load_signer(path: Path | str):
    """model-signing's signing configuration for this private key; a UserError before any work
    when the key is unreadable or of a kind model-signing cannot sign with."""
    _check_curve(_read_private_key(path), path, "signing key")
    signer = _model_signing().signing.Config().use_elliptic_key_signer(private_key=path, password=_passphrase())
    return signer.set_hashing_config(_hashing_config())


def sign_package(package: Path, signer) -> None:
    """Write model.sig over every file of the finished package folder (manifest.json last written)."""
    signer.sign(package, package / SIGNATURE_NAME)


def load_public_key(path: Path | str):
    """An ECDSA public key (or a legacy ed25519 one, which verifies only manifest.sig)."""
    serialization, _, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as e:
        raise UserError(f"public key {path}: {e.strerror}") from None
    except ValueError as e:
        raise UserError(f"public key {path}: not a PEM public key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        _check_curve(key, path, "public key")
    return key


def require_signed(stored: list[str], public_key: Path | str, where: str) -> None:
    """Before anything is fetched: the key is usable and the package holds a signature."""
    expected = key_id(load_public_key(public_key))
    if not set(SIGNATURE_NAMES) & set(stored):
        raise UserError(f"{where}: the package is not signed ({SIGNATURE_NAME} missing), and a "
                        f"signature by key {expected} is required; refusing it")


def check_signature(package: Path, public_key: Path | str, where: str) -> str:
    """Check the package folder's signature with `public_key`; return what was verified, or
    raise a UserError saying which check failed (unsigned, another key, a changed, added or
    removed file, a signature that is not one)."""
    key = load_public_key(public_key)
    expected = key_id(key)
    sig = package / SIGNATURE_NAME
    if not sig.is_file():
        if (package / LEGACY_SIGNATURE_NAME).is_file():
            return _legacy_check(package, key, where)
        require_signed([], public_key, where)
    _, _, ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        raise UserError(f"{where}: signed in the model-signing format ({SIGNATURE_NAME}), which needs "
                        f"an ECDSA public key; {public_key} is an ed25519 key of countrytune's old format: "
                        f"ask the publisher for their current public key")
    if sig.stat().st_size > MAX_SIGNATURE_BYTES:
        raise UserError(f"{where}: {SIGNATURE_NAME} is larger than a signature can be; refusing the package")
    from cryptography.exceptions import InvalidSignature

    verifier = _model_signing().verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    try:
        verifier.set_hashing_config(_hashing_config()).verify(package, sig)
    except InvalidSignature:
        raise UserError(f"{where}: {SIGNATURE_NAME} does not verify with key {expected}: its signed "
                        f"statement was altered or signed by another key; refusing the package") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _refusal(str(e), package, expected, where) from None
    if unsigned := sorted(_present(package) - set(_signed_files(sig))):  # the signer's ignore_paths
        raise UserError(f"{where}: file {unsigned[0]!r} is not covered by {SIGNATURE_NAME} (the signer "
                        f"left it out); refusing unverifiable content")
    return f"every file signed by key {expected} ({SIGNATURE_NAME}, model-signing)"


def _present(package: Path) -> set[str]:
    return {p.relative_to(package).as_posix() for p in package.rglob("*")
            if p.is_file() and p.relative_to(package).as_posix() != SIGNATURE_NAME}


def _signed_files(sig: Path) -> dict[str, tuple[str, str]]:
    """name -> (algorithm, digest) of each file the bundle's in-toto statement lists; trusted
    only once model-signing has verified the envelope."""
    bundle = json.loads(sig.read_text(encoding="utf-8"))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    return {r["name"]: (r["algorithm"], r["digest"]) for r in statement["predicate"]["resources"]}


def _refusal(message: str, package: Path, expected: str, where: str) -> UserError:
    """model-signing's ValueError, said in countrytune's words: which key, which files."""
    if message.startswith("Key mismatch"):
        try:
            hint = json.loads((package / SIGNATURE_NAME).read_text())["verificationMaterial"]["publicKey"]["hint"]
        except (ValueError, KeyError, TypeError):
            hint = "unknown"
        return UserError(f"{where}: signed by key {str(hint)[:16]}, not by the required key {expected}; refusing")
    if message.startswith("Signature mismatch"):  # the envelope verified: its file list is the signer's
        signed, present = _signed_files(package / SIGNATURE_NAME), _present(package)
        changed = sorted(n for n in present & signed.keys() if signed[n] != ("sha256", sha256_file(package / n)))
        parts = [f"{', '.join(names)} {how}" for names, how in (
            (changed, "changed after signing"), (sorted(present - signed.keys()), "added"),
            (sorted(signed.keys() - present), "removed")) if names]
        return UserError(f"{where}: the package is not what key {expected} signed: {'; '.join(parts) or message}; "
                         f"refusing the package")
    return UserError(f"{where}: {SIGNATURE_NAME} is not a model-signing signature "
                     f"({message.splitlines()[0] if message else 'unreadable'}); refusing the package")


def _legacy_check(package: Path, public_key, where: str) -> str:
    """LEGACY, verify only: countrytune's former `manifest.sig`, an ed25519 signature of
    manifest.json's exact bytes (JSON: algorithm, key_id, base64 signature)."""
    from cryptography.exceptions import InvalidSignature

    _, _, ed25519 = _crypto()
    if not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise UserError(f"{where}: signed in countrytune's old ed25519 format ({LEGACY_SIGNATURE_NAME}); "
                        f"check it with the publisher's old ed25519 public key, or re-export the run as a "
                        f"new version signed with a key from `countrytune keys generate`")
    expected = key_id(public_key)
    data = (package / LEGACY_SIGNATURE_NAME).read_bytes()[:MAX_SIGNATURE_BYTES]
    try:
        record = json.loads(data)
        sig, signer = base64.b64decode(record["signature"], validate=True), str(record["key_id"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{where}: {LEGACY_SIGNATURE_NAME} is not a countrytune signature; refusing the package") from None
    if record.get("algorithm") != "ed25519" or signer != expected:
        raise UserError(f"{where}: signed by key {signer}, not by the required key {expected}; refusing")
    try:
        public_key.verify(sig, (package / MANIFEST_NAME).read_bytes())
    except InvalidSignature:
        raise UserError(f"{where}: the signature does not match manifest.json: the manifest was changed "
                        f"after it was signed (by key {expected}); refusing the package") from None
    return f"manifest signed by key {expected} (legacy ed25519 {LEGACY_SIGNATURE_NAME}: re-export to sign every file)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="make the ECDSA P-256 key pair that signs exported packages (model-signing)",
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
    key = _read_private_key(args.key).public_key() if b"PRIVATE KEY" in text else load_public_key(args.key)
    print(key_id(key))
    return 0

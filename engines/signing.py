"""Ed25519 signatures over canonical manifest bytes (the ``cryptography`` package).

A vendor's key pair is ``NAME.key`` (PKCS#8 PEM, mode 0600, kept by the vendor)
and ``NAME.pub`` (SubjectPublicKeyInfo PEM). The appliance trusts every
``*.pub`` in its configured trusted-keys directory and nothing else.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engines.errors import BundleRejected, EngineError
from engines.files import fsync_dir, temporary_name

__all__ = ["KeyPair", "TrustedKey", "generate_keypair", "load_trusted_keys", "sign", "verify"]

logger = logging.getLogger(__name__)

KEY_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class KeyPair:
    """Paths of a generated key pair."""

    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class TrustedKey:
    """A public key the appliance trusts; ``name`` is its file stem."""

    name: str
    key: Ed25519PublicKey


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never overwrite) via a temporary name, fsync'd, then linked into place."""
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if path exists: never overwrite a key
    except FileExistsError:
        raise EngineError(f"key file {str(path)!r} already exists; choose another name") from None
    finally:
        tmp.unlink()


def generate_keypair(directory: Path, name: str) -> KeyPair:
    """Make an Ed25519 key pair ``directory/NAME.key`` (0600) and ``directory/NAME.pub``."""
    if not KEY_NAME_RE.match(name):
        raise EngineError(f"key name {name!r} must match {KEY_NAME_RE.pattern}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pub = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    pair = KeyPair(directory / f"{name}.key", directory / f"{name}.pub")
    if pair.public_key.exists():
        raise EngineError(f"key file {str(pair.public_key)!r} already exists; choose another name")
    _write_new(pair.private_key, pem, 0o600)
    _write_new(pair.public_key, pub, 0o644)
    fsync_dir(directory)
    logger.info("generated Ed25519 key pair %s in %s", name, directory)
    return pair


def sign(private_key_pem: bytes, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of ``message`` with a PEM private key."""
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise EngineError(f"private key is not an unencrypted PEM key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EngineError(f"private key is {type(key).__name__}, not Ed25519")
    return key.sign(message)


def load_trusted_keys(directory: Path) -> list[TrustedKey]:
    """Every ``*.pub`` Ed25519 key in ``directory`` (sorted by name); a bad file is an error."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    keys = []
    for path in sorted(directory.glob("*.pub")):
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (ValueError, TypeError) as exc:
            raise EngineError(f"trusted key {str(path)!r} is not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise EngineError(f"trusted key {str(path)!r} is {type(key).__name__}, not Ed25519")
        keys.append(TrustedKey(path.stem, key))
    return keys


def verify(message: bytes, signature: bytes, trusted_keys_dir: Path) -> str:
    """Return the name of the trusted key that signed ``message``; raise BundleRejected otherwise."""
    if len(signature) != SIGNATURE_BYTES:
        raise BundleRejected(f"signature is {len(signature)} bytes, an Ed25519 signature is {SIGNATURE_BYTES}")
    keys = load_trusted_keys(trusted_keys_dir)
    if not keys:
        raise BundleRejected(
            f"signature cannot be checked: no trusted keys (*.pub) in {str(trusted_keys_dir)!r}"
        )
    for trusted in keys:
        try:
            trusted.key.verify(signature, message)
        except InvalidSignature:
            continue
        return trusted.name
    raise BundleRejected(
        f"signature does not verify against any trusted key ({', '.join(k.name for k in keys)}): "
        "the signer is untrusted or the manifest was changed after signing"
    )

"""Ed25519 key pairs and signatures."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from engines.errors import BundleRejected, EngineError
from engines.signing import generate_keypair, load_trusted_keys, sign, verify


def test_keygen_writes_private_key_0600_and_public_key(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path, "acme")
    assert pair.private_key.name == "acme.key" and pair.public_key.name == "acme.pub"
    assert stat.S_IMODE(pair.private_key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in pair.private_key.read_bytes()
    assert [k.name for k in load_trusted_keys(tmp_path)] == ["acme"]


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    generate_keypair(tmp_path, "acme")
    with pytest.raises(EngineError, match="already exists"):
        generate_keypair(tmp_path, "acme")


@pytest.mark.parametrize("name", ["../evil", "", "a/b", ".hidden"])
def test_keygen_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(EngineError, match="must match"):
        generate_keypair(tmp_path, name)


def test_verify_names_the_signer_and_refuses_others(tmp_path: Path) -> None:
    trusted, other = tmp_path / "trusted", tmp_path / "other"
    generate_keypair(trusted, "a")
    good = generate_keypair(trusted, "b").private_key.read_bytes()
    bad = generate_keypair(other, "c").private_key.read_bytes()
    assert verify(b"msg", sign(good, b"msg"), trusted) == "b"
    with pytest.raises(BundleRejected, match="does not verify against any trusted key"):
        verify(b"msg", sign(bad, b"msg"), trusted)
    with pytest.raises(BundleRejected, match="does not verify"):
        verify(b"msg2", sign(good, b"msg"), trusted)
    with pytest.raises(BundleRejected, match="no trusted keys"):
        verify(b"msg", sign(good, b"msg"), tmp_path / "empty")
    with pytest.raises(BundleRejected, match="64"):
        verify(b"msg", b"short", trusted)


def test_a_non_ed25519_trusted_key_is_an_error(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    tmp_path.joinpath("ec.pub").write_bytes(
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(EngineError, match="not Ed25519"):
        load_trusted_keys(tmp_path)

"""Ed25519 signatures over payload content addresses, TUF-style: the server signs, clients pin its key.

A forged or swapped payload would silently poison every client that trains on it; a checksum only proves the
bytes are the ones somebody hashed. The server signs ``b"plada-payload-v1\\0" + sha256(payload)`` with its key;
a client that pins the server's public key (``--trust``, ``PLADA_TRUST``) refuses unsigned or mis-signed
payloads. Text forms: public key ``ed25519:<base64url>``; signature ``ed25519:<key id>:<base64url>`` where the
key id is the first 16 hex digits of sha256(public key).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from plada.shared.errors import SignatureError

ALGORITHM = "ed25519"
_DOMAIN = b"plada-payload-v1\0"
# a pool definition is signed under its own domain, so a definition's signature can never pass for a payload's
DEFINITION_DOMAIN = b"plada-pool-definition-v1\0"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _message(sha256_hex: str, domain: bytes = _DOMAIN) -> bytes:
    if len(sha256_hex) != 64:
        raise SignatureError("a signature covers a 64-hex sha256")
    return domain + bytes.fromhex(sha256_hex)


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    @property
    def key_id(self) -> str:
        return key_id(self.raw)

    @property
    def text(self) -> str:
        return f"{ALGORITHM}:{_b64(self.raw)}"

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """``ed25519:<base64url>`` (what ``plada-server key show`` prints)."""
        alg, _, body = text.strip().partition(":")
        try:
            raw = _unb64(body) if alg == ALGORITHM else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise SignatureError(f"not a plada public key: {text[:40]!r} (expected 'ed25519:<base64url>')")
        return cls(raw)

    def verify(self, sha256_hex: str, signature: str | None, *, domain: bytes = _DOMAIN, what: str = "payload") -> None:
        """Raise ``SignatureError`` unless ``signature`` is this key's signature of ``sha256_hex`` (under
        ``domain``: payloads and pool definitions are signed apart)."""
        if not signature:
            raise SignatureError(f"{what} {sha256_hex[:12]}… is unsigned, but key {self.key_id} is pinned")
        alg, kid, body = [*signature.split(":", 2), "", ""][:3]
        if alg != ALGORITHM or kid != self.key_id:
            raise SignatureError(
                f"{what} {sha256_hex[:12]}… is signed by key {kid or '?'}, not by the pinned key {self.key_id}"
            )
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(_unb64(body), _message(sha256_hex, domain))
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError(
                f"{what} {sha256_hex[:12]}…: signature does not verify with key {self.key_id}"
            ) from exc


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def public(self) -> PublicKey:
        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PublicKey(raw)

    def sign(self, sha256_hex: str, *, domain: bytes = _DOMAIN) -> str:
        return f"{ALGORITHM}:{self.public.key_id}:{_b64(self.private.sign(_message(sha256_hex, domain)))}"


def load_or_create_key(path: Path) -> SigningKey:
    """The server's key at ``path`` (raw 32-byte seed, mode 0600), created atomically on first use; two
    processes starting together end up with the same key (O_EXCL: the loser reads the winner's)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        seed = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}")  # unique per caller
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, seed)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created it first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    seed = path.read_bytes()
    if len(seed) != 32:
        raise SignatureError(f"signing key {path} is damaged ({len(seed)} bytes, expected 32)")
    return SigningKey(Ed25519PrivateKey.from_private_bytes(seed))

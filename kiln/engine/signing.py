"""Ed25519 signatures on engine files: a deployment can refuse any engine its own pipeline did not sign.

A signed engine file (format version 2) ends with a trailer after its sha256::

    ... sha256 | Ed25519 public key (32 bytes) | signature (64 bytes) | b"KILNSIG\\0"

The signature covers every byte before the trailer, sha256 included. The trailer sits at the end, in a fixed
place, so it is checked before the header or anything else in the file is parsed: a tampered signed engine is
refused before any of its content is interpreted. The sha256 stays, for accidents (it needs no key).

The public key in the trailer names the signer; it is trusted only when it is one of the caller's
``trusted_keys``. Keys are ``cryptography``'s Ed25519PrivateKey / Ed25519PublicKey objects or their raw
32-byte forms (``kiln sign`` / ``kiln verify`` also read PEM files).
"""
from __future__ import annotations

import hashlib
import struct
from typing import Any, Iterable

from ..errors import EngineFormatError

MARKER = b"KILNSIG\0"
_KEY, _SIG = 32, 64
TRAILER_BYTES = _KEY + _SIG + len(MARKER)
SIGNED_FROM_VERSION = 2  # version 1 files have no trailer

__all__ = ["sign", "split", "verify", "private_key", "public_key", "fingerprint", "TRAILER_BYTES"]


def private_key(key: Any):
    """An Ed25519PrivateKey from one, or from its raw 32 bytes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, (bytes, bytearray)) and len(key) == _KEY:
        return Ed25519PrivateKey.from_private_bytes(bytes(key))
    raise TypeError(f"signing_key must be an Ed25519PrivateKey or its raw 32 bytes, got {_describe(key)}")


def public_key(key: Any):
    """An Ed25519PublicKey from one, from its raw 32 bytes, or from a private key (its public half)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if isinstance(key, (bytes, bytearray)) and len(key) == _KEY:
        return Ed25519PublicKey.from_public_bytes(bytes(key))
    raise TypeError(f"a trusted key must be an Ed25519PublicKey or its raw 32 bytes, got {_describe(key)}")


def _describe(key: Any) -> str:
    if isinstance(key, (bytes, bytearray)):
        return f"{len(key)} bytes"
    return type(key).__name__


def _raw(public) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def fingerprint(key: Any) -> str:
    """A short name for a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    raw = key if isinstance(key, (bytes, bytearray)) else _raw(public_key(key))
    return hashlib.sha256(bytes(raw)).hexdigest()[:16]


def split(data: bytes) -> tuple[bytes, bytes | None, bytes | None]:
    """(the signed bytes, the signer's raw public key, the signature); the last two None for an unsigned file.
    Only the fixed prefix (magic, version) is read: nothing else of the file is interpreted."""
    if len(data) < 12 or not data.endswith(MARKER):
        return data, None, None
    (version,) = struct.unpack("<I", data[8:12])
    if version < SIGNED_FROM_VERSION or len(data) < TRAILER_BYTES + 20:
        return data, None, None
    body = data[:-TRAILER_BYTES]
    key = data[len(body):len(body) + _KEY]
    return body, key, data[len(body) + _KEY:-len(MARKER)]


def sign(data: bytes, signing_key: Any) -> bytes:
    """The engine file ``data`` signed with ``signing_key`` (a signature it already has is replaced). A format
    version 1 file is first rewritten as version 2 (same content, new version and sha256): version 1 has no
    place for a signature."""
    from .format import MAGIC
    key = private_key(signing_key)
    body, _, _ = split(bytes(data))
    if body[:8] != MAGIC or len(body) < 20 + 32:
        raise EngineFormatError("cannot sign: the data is not a Kiln engine file (no KILNENG magic)")
    (version,) = struct.unpack("<I", body[8:12])
    if version < SIGNED_FROM_VERSION:
        unsigned = body[:8] + struct.pack("<I", SIGNED_FROM_VERSION) + body[12:-32]
        if hashlib.sha256(body[:-32]).digest() != body[-32:]:
            raise EngineFormatError("cannot sign: the engine file is corrupt (checksum mismatch)")
        body = unsigned + hashlib.sha256(unsigned).digest()
    return body + _raw(key.public_key()) + key.sign(body) + MARKER


def verify(data: bytes, trusted_keys: Iterable[Any] | None, where: str) -> tuple[bytes, str | None]:
    """(the signed bytes, the signer's fingerprint or None) of an engine file, checked before anything in it is
    parsed. A signature is always checked against the key it names (a damaged trailer is an error, not an
    unsigned file); with ``trusted_keys`` (None: no requirement) the file must be signed by one of them."""
    body, key, signature = split(data)
    if key is None:
        if trusted_keys is not None:
            raise EngineFormatError(f"{where} is not signed, and trusted keys were given: only engines signed by "
                                    f"one of them are loaded (sign it with `kiln sign` or "
                                    f"engine.save(path, signing_key=...))")
        return body, None
    from cryptography.exceptions import InvalidSignature
    try:
        public_key(key).verify(signature, body)
    except (InvalidSignature, ValueError):
        raise EngineFormatError(f"{where} has an invalid signature: the file was modified after it was signed "
                                f"(signer key {fingerprint(key)})") from None
    if trusted_keys is not None:
        trusted = {_raw(public_key(k)) for k in trusted_keys}
        if key not in trusted:
            raise EngineFormatError(f"{where} is signed by key {fingerprint(key)}, which is not among the trusted "
                                    f"keys ({', '.join(sorted(fingerprint(k) for k in trusted)) or 'none given'})")
    return body, fingerprint(key)

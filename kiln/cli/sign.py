"""`kiln sign engine.kiln --key signing.pem`: sign an engine file (Ed25519), so deployments that trust the key
load it (``Engine.load(path, trusted_keys=[...])``, ``kiln verify``). ``--generate-key KEY`` writes a new key
pair (KEY, private, and KEY.pub, public; PEM). Key files: PEM, or the raw 32 bytes."""
from __future__ import annotations

import argparse
from pathlib import Path

from .errors import CLIError
from .loading import check_readable
from .output import emit


def add_parser(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("sign", parents=[common], help="sign an engine file with an Ed25519 key",
                       description="Sign an engine file with an Ed25519 private key (a signature it has is "
                                   "replaced). Deployments load it with Engine.load(path, trusted_keys=[...]).")
    p.add_argument("engine", nargs="?", help="the engine file")
    p.add_argument("--key", metavar="KEY", help="the private key: PEM (PKCS8) or the raw 32 bytes")
    p.add_argument("-o", "--output", metavar="ENGINE", help="where to write the signed engine (default: in place)")
    p.add_argument("--generate-key", metavar="KEY",
                   help="write a new key pair to KEY (private) and KEY.pub (public), PEM, and exit")
    return p


def read_key(path: str, private: bool):
    """An Ed25519 key from a PEM file or a file of its raw 32 bytes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
    data = check_readable(path, "key file").read_bytes()
    kind = "private" if private else "public"
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data) if private else Ed25519PublicKey.from_public_bytes(data)
    try:
        key = load_pem_private_key(data, password=None) if private else load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise CLIError(f"key file {path!r} is not an Ed25519 {kind} key (PEM or raw 32 bytes): {e}") from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise CLIError(f"key file {path!r} holds a {type(key).__name__}, not an Ed25519 {kind} key")
    return key


def _generate(path: str) -> dict:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                              PublicFormat)
    key = Ed25519PrivateKey.generate()
    private, public = Path(path), Path(path + ".pub")
    for p in (private, public):
        if p.exists():
            raise CLIError(f"{str(p)!r} exists; not overwriting a key")
    private.touch(mode=0o600)
    private.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    from ..engine.signing import fingerprint
    return {"private_key": str(private), "public_key": str(public), "key": fingerprint(key)}


def run(args) -> int:
    from ..engine.signing import fingerprint, sign
    if args.generate_key:
        doc = _generate(args.generate_key)
        emit(args, f"wrote {doc['private_key']} (private: keep it secret) and {doc['public_key']} (public, key "
                   f"{doc['key']})", doc)
        return 0
    if not args.engine or not args.key:
        raise CLIError("sign needs an engine file and --key (or --generate-key KEY to make a key pair)")
    data = check_readable(args.engine, "engine file").read_bytes()
    key = read_key(args.key, private=True)
    out = args.output or args.engine
    Path(out).write_bytes(sign(data, key))
    emit(args, f"{out}: signed by key {fingerprint(key)}", {"engine": str(out), "key": fingerprint(key)})
    return 0

"""`kiln verify engine.kiln --trusted-key pub.pem`: check an engine file's signature (and checksum and header)
as ``Engine.load(path, trusted_keys=...)`` does, without loading it. Exit 0 when it would load, 1 otherwise."""
from __future__ import annotations

import argparse

from .errors import CLIError
from .loading import check_readable
from .output import emit


def add_parser(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("verify", parents=[common], help="check an engine file's signature",
                       description="Check that an engine file is intact and signed by a trusted key (exit 0), "
                                   "as Engine.load(path, trusted_keys=...) does before reading anything else.")
    p.add_argument("engine", help="the engine file")
    p.add_argument("--trusted-key", action="append", default=[], metavar="KEY",
                   help="a public key to trust: PEM or the raw 32 bytes (repeat for several); without one, "
                        "the file must be signed and its signature intact")
    return p


def run(args) -> int:
    from ..engine.format import unpack
    from ..engine.signing import fingerprint, split
    from .sign import read_key
    data = check_readable(args.engine, "engine file").read_bytes()
    trusted = [read_key(k, private=False) for k in args.trusted_key]
    if not trusted and split(data)[1] is None:
        raise CLIError(f"{args.engine!r} is not signed")
    unpack(data, f"engine file {args.engine!r}", trusted or None)
    signer = fingerprint(split(data)[1])
    emit(args, f"{args.engine}: signed by key {signer}" + (", a trusted key" if trusted else
                                                           " (signature intact; give --trusted-key to require a "
                                                           "signer)"),
         {"engine": args.engine, "key": signer, "trusted": bool(trusted), "ok": True})
    return 0

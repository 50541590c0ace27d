"""The engine file: one file, plain data.

Layout::

    b"KILNENG\\0"                 8 bytes, magic
    format version               u32 little-endian
    header length                u64 little-endian
    header                       JSON (versions, device, build config, section sizes, report)
    plan                         JSON (the optimized graph, see graph_json.py)
    weights                      safetensors
    sha256                       32 bytes over everything before it
    [signature trailer]          version 2, signed files only: Ed25519 public key, signature, b"KILNSIG\\0"
                                 (signing.py; checked before anything else in the file is read)

Version 2 adds the signature trailer and the header fields of weight-stripped and refittable engines
(``weights``, ``source``: source.py, kiln/builder/replay.py); version 1 files load as they always did.

Loading parses JSON and safetensors only: no pickle, no eval, no code taken from the file. The file is
hostile data (the sha256 is unkeyed: an edited file carries a valid one), so section sizes are checked
against the file before anything is sliced or allocated, JSON is parsed with a bounded nesting depth, the
header is checked against its schema (validate.py) and the weights' stored dtypes and shapes against the
header; the plan is checked by Engine.deserialize, which has the op registry.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

import torch

from ..errors import EngineFormatError
from . import bounded_json, device_info, signing, validate

MAGIC = b"KILNENG\0"
FORMAT_VERSION = 2
_DIGEST = 32
MAX_FILE_BYTES = 64 << 30  # Engine.load's default limit: a larger file is refused before it is read

# safetensors has no code for these dtypes: stored as raw bytes, dtype recorded in the header.
_AS_BYTES = {torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.uint16, torch.uint32, torch.uint64}
if hasattr(torch, "float8_e8m0fnu"):
    _AS_BYTES.add(torch.float8_e8m0fnu)
_DTYPE_NAMES = {str(d).replace("torch.", ""): d for d in _AS_BYTES}


def pack(header: dict, plan: dict, weights: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save
    stored, raw_dtypes = {}, {}
    for k, t in weights.items():
        t = t.detach().cpu().contiguous()
        if t.dtype in _AS_BYTES:
            raw_dtypes[k] = [str(t.dtype).replace("torch.", ""), list(t.shape)]
            t = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        stored[k] = t
    weights_bytes = save(stored) if stored else b""
    plan_bytes = json.dumps(plan, separators=(",", ":")).encode()
    header = dict(header, plan_bytes=len(plan_bytes), weights_bytes=len(weights_bytes), raw_dtypes=raw_dtypes)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    body = MAGIC + struct.pack("<IQ", FORMAT_VERSION, len(header_bytes)) + header_bytes + plan_bytes + weights_bytes
    return body + hashlib.sha256(body).digest()


def unpack(data: bytes, where: str = "engine", trusted_keys=None,
           strict_versions: bool = True) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(header, plan, weights) of an engine file. With ``trusted_keys`` (Ed25519 public keys), the file must be
    signed by one of them (signing.py); the signature is checked before anything after the version is read.
    ``strict_versions``: refuse a newer Kiln's or another torch major's engine before its header is checked
    (otherwise device_info.place notes them)."""
    if len(data) < len(MAGIC) + 12 + _DIGEST:
        if not data.startswith(MAGIC[: len(data)]) or not data:
            raise EngineFormatError(f"{where} is not a Kiln engine file (too short, no KILNENG magic)")
        raise EngineFormatError(f"{where} is truncated ({len(data)} bytes)")
    if data[:8] != MAGIC:
        raise EngineFormatError(f"{where} is not a Kiln engine file (no KILNENG magic; "
                                f"starts with {data[:8]!r}). Build one with kiln.build or `kiln build`.")
    version, hlen = struct.unpack("<IQ", data[8:20])
    if version > FORMAT_VERSION:
        raise EngineFormatError(f"{where} uses engine format version {version}, newer than this Kiln supports "
                                f"({FORMAT_VERSION}); upgrade Kiln or rebuild the engine")
    if version < 1:
        raise EngineFormatError(f"{where} has an invalid format version {version}")
    data, _ = signing.verify(data, trusted_keys, where)
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if 20 + hlen > len(body):
        raise EngineFormatError(f"{where} is truncated (header claims {hlen} bytes)")
    if hashlib.sha256(body).digest() != digest:
        raise EngineFormatError(f"{where} is corrupt or was modified: checksum mismatch (truncated or tampered file)")
    header = _json(body[20:20 + hlen], "the header", where)
    # first: a newer Kiln's header may not fit ours
    if strict_versions and isinstance(header, dict) and "versions" in header:
        device_info.check_versions(header["versions"], where)
    try:
        validate.check_header(header)
    except EngineFormatError as e:
        raise EngineFormatError(f"{where}: {e}") from None
    p0 = 20 + hlen
    p1 = p0 + header["plan_bytes"]
    p2 = p1 + header["weights_bytes"]
    if p2 != len(body):  # before any slice: a section size past the file allocates nothing
        raise EngineFormatError(f"{where}: section sizes do not add up to the file size (header fields "
                                f"'plan_bytes' {header['plan_bytes']} and 'weights_bytes' "
                                f"{header['weights_bytes']}; {len(body) - p0} bytes follow the header)")
    plan = _json(body[p0:p1], "the plan", where)
    weights = _load_weights(body[p1:p2], header.get("raw_dtypes", {}), where)
    return header, plan, weights


def _json(text: bytes, what: str, where: str) -> Any:
    try:
        return bounded_json.loads(text, validate.MAX_JSON_DEPTH, what)
    except EngineFormatError as e:
        raise EngineFormatError(f"{where}: {e}") from None


def _load_weights(blob: bytes, raw_dtypes: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    if not blob:
        return {}
    from safetensors.torch import load
    try:
        tensors = load(blob)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise EngineFormatError(f"{where}: weights section is not valid safetensors: {e}") from None
    for k, (dtype_name, shape) in raw_dtypes.items():  # types checked by validate.check_header
        if k not in tensors or dtype_name not in _DTYPE_NAMES:
            raise EngineFormatError(f"{where}: weight {k!r} has an unknown stored dtype {dtype_name!r} "
                                    f"(header field 'raw_dtypes')")
        dtype, stored = _DTYPE_NAMES[dtype_name], tensors[k]
        want = math.prod(shape) * dtype.itemsize
        if stored.dtype != torch.uint8 or stored.dim() != 1 or stored.numel() != want:
            raise EngineFormatError(f"{where}: weight {k!r} is declared {dtype_name} {shape} (header field "
                                    f"'raw_dtypes', {want} bytes), but {stored.numel() * stored.element_size()} "
                                    f"bytes of {stored.dtype} are stored")
        tensors[k] = stored.view(dtype).reshape(shape) if want else torch.empty(shape, dtype=dtype)
    return tensors

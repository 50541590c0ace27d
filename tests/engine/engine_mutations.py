"""Hostile engine files made from valid ones: ``mutate(data, rng)`` returns (mutated bytes, what was done).

The sha256 in an engine file is unkeyed, so an attacker recomputes it after editing; most mutations here do
the same, so that the loader's validation (not the checksum) is what meets them. Kinds:

- ``raw``: byte flips, insertions, deletions and truncations anywhere, checksum left stale;
- ``bytes``: the same inside the header JSON, plan JSON or the safetensors header, checksum recomputed;
- ``json``: edits to the decoded header and plan (numbers to 0/-1/huge/float/str/null, deleted keys, deep
  nesting, value indices swapped into cycles, op types changed, strides/groups/pads/axes set to bad values,
  epilogue and tactic records garbled, declared section sizes changed), re-packed with a fresh checksum;
- ``weights``: a weight re-stored with another dtype or shape, renamed, dropped, or declared raw.

Weight *values* are never changed: any value is a valid model (a Loop trip count of 2**60 is a model that
runs for ever, which no loader can refuse), so mutating them would only find slow models.
"""
from __future__ import annotations

import copy
import hashlib
import json
import random
import struct

from kiln.engine import format as fmt

INTERESTING = [0, -1, 1, 2, 3, -2, 7, 64, 2**31 - 1, 2**31, 2**32, 2**62, 2**63, -2**63, 10**30, 0.5, -0.0,
               1e308, "1", "", "relu", None, True, False, [], {}, [0], [1, 1], [-1, 0, 2**40], {"i": 1}]
INTS = [0, -1, -2, 1, 2, 3, 5, 2**31 - 1, 2**31, 2**40, 2**63, -2**63, 10**20]
WINDOW = ("strides", "dilations", "kernel_shape", "pads", "group", "output_padding")
ATTR_NAMES = ["strides", "pads", "dilations", "group", "kernel_shape", "axis", "axes", "perm", "epilogue",
              "in_place", "channels_last", "ceil_mode", "storage_order", "keepdims", "transB", "alpha", "scale",
              "heads", "program", "attrs", "output_padding", "output_shape", "auto_pad", "count_include_pad",
              "allowzero", "then_branch", "body", "kernel_shape"]
EPILOGUE_STEPS = ["relu", "add:0", "add:1", "add:2", "add:3", "add:7", "add:-1", "add:x", "add:", "add",
                  "mul:1", "mul:99", "addq:1", "addq:1:x", "addq:1:0.5", "clip", "clip:a:b", "clip::",
                  "clip:1:0", "leaky_relu", "leaky_relu:x", "elu:", "hardsigmoid:1", "bogus", "", 5, None]
TACTICS = ["torch", "onednn", "onednn_gemm", "aten", "cudnn", "triton", "triton_gemm", "sdpa", "unfused", "fp8_conv",
           "int8_conv", "bogus", "", 5, None]
VERSIONS = ["0.1.0", "0.1.99", "0.2.0", "1.0.0", "99.0.0", "0.0.1", "abc", "", "0", "0.1", "2.13.0", "3.0.0",
            "1.13.1", "2.99.0+cu999", 5, None, [0, 1]]
MACHINES = ["x86_64", "aarch64", "arm64", "AMD64", "", 5, None]
CAPABILITIES = ["AVX512", "AVX2", "DEFAULT", "NO AVX", "SVE256", "ZVECTOR", "AVX1024", "", 5, None]


def split(data: bytes) -> tuple[int, bytes, bytes, bytes]:
    """(version, header, plan, weights) of a valid engine (the seeds; never a mutated file)."""
    version, hlen = struct.unpack("<IQ", data[8:20])
    header = json.loads(data[20:20 + hlen])
    p0 = 20 + hlen
    p1 = p0 + header["plan_bytes"]
    return version, data[20:p0], data[p0:p1], data[p1:len(data) - 32]


def repack(header: bytes, plan: bytes, weights: bytes, version: int = fmt.FORMAT_VERSION,
           hlen: int | None = None) -> bytes:
    """An engine file from its sections with a correct checksum (what an attacker who edits one writes)."""
    body = (fmt.MAGIC + struct.pack("<IQ", version, len(header) if hlen is None else hlen)
            + header + plan + weights)
    return body + hashlib.sha256(body).digest()


# -- the mutation kinds ---------------------------------------------------------------------------------------
def _byte_edits(b: bytearray, lo: int, hi: int, rng: random.Random) -> str:
    done = []
    for _ in range(rng.randint(1, 4)):
        if hi <= lo or not b:
            break
        pos = rng.randrange(lo, min(hi, len(b)))
        kind = rng.choice(["flip", "flip", "set", "insert", "delete", "truncate"])
        if kind == "flip":
            b[pos] ^= 1 << rng.randrange(8)
        elif kind == "set":
            b[pos] = rng.choice(b'{}[]"\\0-9,:eE.\x00\xff ')
        elif kind == "insert":
            b[pos:pos] = bytes(rng.choice([b"[", b"{", b"9" * 30, b"\x00", b'"', b",", b"-"]))
        elif kind == "delete":
            del b[pos:pos + rng.randint(1, 8)]
        else:
            del b[pos:]
            break
        done.append(f"{kind}@{pos}")
    return ",".join(done)


def mutate_raw(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    return bytes(b), "raw " + _byte_edits(b, 0, len(b), rng)


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    version, header, plan, weights = split(data)
    (st_len,) = struct.unpack("<Q", weights[:8]) if len(weights) >= 8 else (0,)
    which = rng.choice(["header", "plan", "plan", "weights"])
    if which == "weights":  # the safetensors length and its JSON header, not tensor values (see the docstring)
        b = bytearray(weights)
        what = _byte_edits(b, 0, 8 + st_len, rng)
        return repack(header, plan, bytes(b), version), f"bytes weights {what}"
    b = bytearray(header if which == "header" else plan)
    what = _byte_edits(b, 0, len(b), rng)
    if which == "header":
        return repack(bytes(b), plan, weights, version), f"bytes header {what}"
    h = json.loads(header)
    h["plan_bytes"] = len(b)
    return repack(json.dumps(h).encode(), bytes(b), weights, version), f"bytes plan {what}"


def _slots(doc, path=()):
    """Every (container, key, path) of a JSON document, depth first."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        out.append((doc, k, path + (k,)))
        out.extend(_slots(v, path + (k,)))
    return out


def _nodes(plan: dict) -> list[dict]:
    """Every node record, subgraphs included."""
    out = []

    def walk(g):
        if not isinstance(g, dict):
            return
        for n in g.get("nodes", []) if isinstance(g.get("nodes"), list) else []:
            if isinstance(n, dict):
                out.append(n)
                for a in (n.get("attrs") or {}).values() if isinstance(n.get("attrs"), dict) else []:
                    if isinstance(a, dict) and "g" in a:
                        walk(a["g"])
    walk(plan)
    return out


def _attrs(node: dict) -> dict:
    return node["attrs"] if isinstance(node.get("attrs"), dict) else {}


def _graphs(plan: dict) -> list[dict]:
    return [plan] + [a["g"] for n in _nodes(plan) for a in _attrs(n).values()
                     if isinstance(a, dict) and isinstance(a.get("g"), dict)]


DEEP = "__deep_nesting__"  # replaced, in the text, by deeply nested lists
DEEP_GRAPH = "__deep_graph__"  # {DEEP_GRAPH: n, "inner": graph}: n levels of If nodes around ``graph``
_NEST = ('{"name":"deep","values":[],"inputs":[],"constants":[],"outputs":[],"opsets":{},"nodes":[{"op":"If",'
         '"domain":"","name":"n","inputs":[],"outputs":[],"attrs":{"then_branch":{"g":', '}},"meta":{}}]}')


def _attr_value(rng: random.Random):
    kind = rng.randrange(5)
    if kind == 0:
        return {"i": rng.choice(INTS)}
    if kind == 1:
        return {"list": [{"i": rng.choice(INTS)} for _ in range(rng.randint(0, 5))]}
    if kind == 2:
        return {"f": rng.choice([0.0, -1.0, 1e308, {"float": "nan"}, {"float": "inf"}, {"float": "x"}])}
    if kind == 3:
        return {"s": rng.choice(["", "SAME_UPPER", "VALID", "NOTSET", "relu", "x" * 50])}
    return rng.choice([{"none": True}, {"t": "nope"}, {"g": {}}, {"type": {"tensor": [1, [2]]}}, {"q": 1}, 5])


def _edit_plan(plan: dict, rng: random.Random, registry_ops: list) -> str:
    nodes, graphs = _nodes(plan), _graphs(plan)
    node = rng.choice(nodes) if nodes else None
    kind = rng.choice(["attr", "attr", "window", "window", "list_elem", "op", "input", "input", "output", "order",
                       "epilogue", "tactic", "type", "const", "drop_node", "dup_node", "graph_io", "nest", "generic",
                       "generic", "generic"])
    if kind == "window":  # strides, dilations, kernel sizes, pads, groups: what native kernels divide by
        windowed = [n for n in nodes if set(_attrs(n)) & set(WINDOW)]
        if windowed:
            node = rng.choice(windowed)
            name = rng.choice(sorted(set(_attrs(node)) & set(WINDOW)) + list(WINDOW))
            cur = node["attrs"].get(name)
            bad = rng.choice([0, 0, -1, -2, 2**31, 2**63 - 1, 2**62])
            if isinstance(cur, dict) and isinstance(cur.get("list"), list) and cur["list"]:
                cur["list"][rng.randrange(len(cur["list"]))] = {"i": bad}
            else:
                node["attrs"][name] = {"i": bad} if name == "group" else {"list": [{"i": bad}, {"i": 1}]}
            return f"{node.get('name')}.{name} gets {bad}"
        kind = "attr"
    if kind in ("attr", "list_elem") and node is not None:
        attrs = node.setdefault("attrs", {})
        name = rng.choice(list(attrs) + ATTR_NAMES) if attrs and rng.random() < 0.7 else rng.choice(ATTR_NAMES)
        cur = attrs.get(name)
        if kind == "list_elem" and isinstance(cur, dict) and isinstance(cur.get("list"), list) and cur["list"]:
            cur["list"][rng.randrange(len(cur["list"]))] = {"i": rng.choice(INTS)}
            return f"{node.get('name')}.{name}[k] set"
        attrs[name] = _attr_value(rng)
        return f"{node.get('name')}.{name} = {attrs[name]!r}"[:120]
    if kind == "op" and node is not None:
        node["domain"], node["op"] = rng.choice(registry_ops + [("", "NoSuchOp"), ("kiln", "Relu"), ("x", "Conv")])
        return f"{node.get('name')} op -> {node['domain']}::{node['op']}"
    if kind in ("input", "output") and node is not None:
        key = "inputs" if kind == "input" else "outputs"
        g = rng.choice(graphs)
        n_values = len(g.get("values", [])) if isinstance(g.get("values"), list) else 3
        new = rng.choice([rng.randrange(max(n_values, 1)), -1, n_values, None, 2**40, "0", 1.0])
        refs = node.get(key)
        if isinstance(refs, list) and refs and rng.random() < 0.8:
            refs[rng.randrange(len(refs))] = new
        elif isinstance(refs, list):
            refs.append(new)
        return f"{node.get('name')}.{key} gets {new!r}"
    if kind == "order":
        g = rng.choice(graphs)
        ns = g.get("nodes")
        if isinstance(ns, list) and len(ns) > 1:
            i, j = rng.randrange(len(ns)), rng.randrange(len(ns))
            ns[i], ns[j] = ns[j], ns[i]
            return f"swap nodes {i},{j}"
        return "swap nodes (none)"
    if kind == "epilogue" and node is not None:
        steps = [rng.choice(EPILOGUE_STEPS) for _ in range(rng.randint(1, 3))]
        node.setdefault("attrs", {})["epilogue"] = {"list": [{"s": s} if isinstance(s, str) else {"i": s}
                                                             for s in steps]}
        return f"{node.get('name')}.epilogue = {steps}"
    if kind == "tactic" and node is not None:
        meta = node.setdefault("meta", {})
        choice = rng.randrange(4)
        if choice == 0:
            meta["tactic"] = {"name": rng.choice(TACTICS), "params": {}}
        elif choice == 1:
            meta["tactic"] = {"name": rng.choice(TACTICS),
                              "params": rng.choice([{"config": [0, 0, 0]}, {"layout": 5}, {"backend": "x"},
                                                    {"config": "*"}, [], None, {"config": [2**40] * 6}])}
        elif choice == 2:
            meta["tactic"] = rng.choice(["onednn", 5, None, [], {"params": {}}, {"name": None}])
        else:
            meta[rng.choice(["covers", "precision", "qid", "x"])] = rng.choice(INTERESTING)
        return f"{node.get('name')}.meta = {meta!r}"[:120]
    if kind == "type":
        g = rng.choice(graphs)
        vals = g.get("values")
        if isinstance(vals, list) and vals:
            rec = rng.choice(vals)
            rec["type"] = rng.choice([{"tensor": [rng.choice([0, 1, 7, 9, 17, 23, 30, -1, 10**9]), [2, 3]]},
                                      {"tensor": [1, [rng.choice(INTS)] * rng.randint(0, 4)]},
                                      {"tensor": [1, None]}, {"tensor": [None, None]}, {"tensor": [1]},
                                      {"sequence": {"tensor": [1, None]}}, {"optional": None}, {"x": 1}, []])
            return f"value {rec.get('name')} type = {rec['type']}"
        return "type (none)"
    if kind == "const":
        g = rng.choice(graphs)
        vals = g.get("values")
        if isinstance(vals, list) and vals:
            rec = rng.choice(vals)
            rec["const"] = rng.choice(["nope", 5, None, [], "t0:x"])
            return f"value {rec.get('name')} const = {rec['const']!r}"
        return "const (none)"
    if kind == "drop_node":
        g = rng.choice(graphs)
        if isinstance(g.get("nodes"), list) and g["nodes"]:
            del g["nodes"][rng.randrange(len(g["nodes"]))]
        return "drop node"
    if kind == "dup_node" and node is not None:
        g = rng.choice(graphs)
        if isinstance(g.get("nodes"), list):
            g["nodes"].insert(rng.randrange(len(g["nodes"]) + 1), copy.deepcopy(node))
        return f"duplicate {node.get('name')}"
    if kind == "graph_io":
        g = rng.choice(graphs)
        key = rng.choice(["inputs", "outputs", "constants"])
        if isinstance(g.get(key), list):
            g[key].append(rng.choice([0, 1, 5, -1, 10**6, None]))
        return f"graph {key} appended"
    if kind == "nest":  # a subgraph holding copies of itself: subgraph nesting far beyond any real model
        subs = [a for n in nodes for a in _attrs(n).values() if isinstance(a, dict) and "g" in a]
        if subs:
            a = rng.choice(subs)
            a["g"] = {DEEP_GRAPH: rng.choice([3, 40, 400, 5000]), "inner": a["g"]}
            return f"subgraphs nested {a['g'][DEEP_GRAPH]} deep"
        return "nest (none)"
    return _edit_generic(plan, rng)


def _edit_generic(doc, rng: random.Random) -> str:
    slots = _slots(doc)
    if not slots:
        return "generic (empty)"
    container, key, path = rng.choice(slots)
    op = rng.randrange(6)
    if op == 0 and isinstance(container, dict):
        del container[key]
        return f"delete {path}"
    if op == 1 and isinstance(container, list):
        container.insert(key, copy.deepcopy(container[key]))
        return f"duplicate {path}"
    if op == 2:
        container[key] = DEEP
        return f"deep nesting at {path}"
    container[key] = copy.deepcopy(rng.choice(INTERESTING))
    return f"{path} = {container[key]!r}"[:120]


def _edit_header(header: dict, rng: random.Random) -> str:
    kind = rng.choice(["versions", "device", "device", "sizes", "arena", "raw_dtypes", "config", "output_names",
                       "generic", "generic", "generic"])
    if kind == "versions":
        which = rng.choice(["kiln", "torch"])
        header.setdefault("versions", {})[which] = rng.choice(VERSIONS)
        return f"versions.{which} = {header['versions'][which]!r}"
    if kind == "device":
        dev = header.setdefault("device", {})
        key = rng.choice(["machine", "cpu_capability", "type", "name", "capability"])
        dev[key] = rng.choice({"machine": MACHINES, "cpu_capability": CAPABILITIES,
                               "type": ["cpu", "cuda", "tpu", 5, None], "name": ["x", 5, None],
                               "capability": [[9, 0], [], "x", None]}[key])
        return f"device.{key} = {dev[key]!r}"
    if kind == "sizes":
        key = rng.choice(["plan_bytes", "weights_bytes"])
        header[key] = rng.choice([0, -1, 2**62, 2**64, 10**30, 1.5, "10", None, header.get(key, 0) + 1,
                                  header.get(key, 0) - 1])
        return f"{key} = {header[key]!r} (kept)"
    if kind == "arena":
        key = rng.choice(["arena", "arena_bytes"])
        header[key] = rng.choice([0, -1, 2**40, 2**62, 2**64, 1.5, "1", None, True, []])
        return f"{key} = {header[key]!r}"
    if kind == "raw_dtypes":
        header["raw_dtypes"] = rng.choice([{"t0:x": ["uint16", [2**40]]}, {"nope": ["uint16", [1]]}, [], None,
                                           {"t0:x": ["bogus", [1]]}, {"t0:x": 5}, {"t0:x": ["uint32", "x"]}])
        return f"raw_dtypes = {header['raw_dtypes']!r} (kept)"
    if kind == "config":
        cfg = header.setdefault("config", {})
        key = rng.choice(["device", "profiles", "optimization_level", "fp16", "cuda_graphs", "layer_precisions"])
        cfg[key] = rng.choice(["cuda:99", "meta", "cpu", "nope", 5, None, [], [{"min": {}, "opt": {}}],
                               [{"min": {"x": [1]}, "opt": {"x": [2]}, "max": {"x": [-1]}}], {"x": "int3"}])
        return f"config.{key} = {cfg[key]!r}"
    if kind == "output_names":
        header["output_names"] = rng.choice([[], ["a", "b", "c", "d"], [5], None, "y", ["y"] * 2])
        return f"output_names = {header['output_names']!r}"
    return "header " + _edit_generic(header, rng)


KEEP = ("plan_bytes", "weights_bytes", "raw_dtypes")


def mutate_json(data: bytes, rng: random.Random, registry_ops: list) -> tuple[bytes, str]:
    version, hb, pb, weights = split(data)
    header, plan = json.loads(hb), json.loads(pb)
    before = {k: header.get(k) for k in KEEP}
    done = []
    for _ in range(rng.randint(1, 3)):
        try:
            done.append(_edit_plan(plan, rng, registry_ops) if rng.random() < 0.7 else _edit_header(header, rng))
        except (AttributeError, TypeError, KeyError):  # an earlier edit left a shape this edit cannot walk
            done.append("edit skipped")
    plan_text = _dumps(plan, rng)
    header["plan_bytes"] = len(plan_text) if header.get("plan_bytes") == before["plan_bytes"] else \
        header.get("plan_bytes")
    header_text = _dumps(header, rng)
    return repack(header_text, plan_text, weights, version), "json " + "; ".join(done)


def _dumps(doc, rng: random.Random) -> bytes:
    """JSON text of ``doc``; the deep-nesting markers are expanded as text (json.dumps would recurse)."""
    deep_graphs = []

    def lift(x):
        if isinstance(x, dict) and DEEP_GRAPH in x:  # (a later edit may have changed the marker itself)
            depth = x[DEEP_GRAPH] if isinstance(x[DEEP_GRAPH], int) and 0 <= x[DEEP_GRAPH] <= 5000 else 3
            deep_graphs.append((depth, json.dumps(lift(x.get("inner")), separators=(",", ":"))))
            return f"{DEEP_GRAPH}{len(deep_graphs) - 1}"
        if isinstance(x, dict):
            return {k: lift(v) for k, v in x.items()}
        if isinstance(x, list):
            return [lift(v) for v in x]
        return x
    text = json.dumps(lift(doc), separators=(",", ":"))
    for i, (depth, inner) in enumerate(deep_graphs):
        text = text.replace(json.dumps(f"{DEEP_GRAPH}{i}"), _NEST[0] * depth + inner + _NEST[1] * depth)
    if DEEP in text:
        depth = rng.choice([50, 200, 1000, 100_000])
        text = text.replace(json.dumps(DEEP), "[" * depth + "]" * depth, 1).replace(json.dumps(DEEP), "0")
    return text.encode()


def mutate_weights(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    import torch
    from safetensors.torch import load, save
    version, hb, pb, weights = split(data)
    header = json.loads(hb)
    tensors = load(weights) if weights else {}
    if not tensors:
        return data, "weights (none)"
    key = rng.choice(sorted(tensors))
    kind = rng.choice(["dtype", "shape", "rename", "drop", "raw", "empty"])
    t = tensors[key]
    if kind == "dtype":
        tensors[key] = t.to(rng.choice([torch.int64, torch.float16, torch.bool, torch.uint8, torch.float64]))
    elif kind == "shape":
        tensors[key] = rng.choice([t.reshape(-1), t.reshape(1, *t.shape), t.reshape(-1)[:1],
                                   torch.cat([t.reshape(-1), t.reshape(-1)])])
    elif kind == "rename":
        tensors["x" + key] = tensors.pop(key)
    elif kind == "drop":
        del tensors[key]
    elif kind == "raw":
        header.setdefault("raw_dtypes", {})[key] = [rng.choice(["uint16", "uint32", "uint64", "float8_e4m3fnuz"]),
                                                    rng.choice([list(t.shape), [2**40], [], [-1], [3, -3]])]
    else:
        tensors[key] = t.reshape(-1)[:0]
    new = save({k: v.contiguous() for k, v in tensors.items()}) if tensors else b""
    header["weights_bytes"] = len(new)
    return repack(json.dumps(header).encode(), pb, new, version), f"weights {kind} {key}"


def mutate(data: bytes, rng: random.Random, registry_ops: list) -> tuple[bytes, str]:
    """One hostile file made from the valid engine ``data``; the same rng state gives the same file."""
    r = rng.random()
    if r < 0.08:
        return mutate_raw(data, rng)
    if r < 0.28:
        return mutate_bytes(data, rng)
    if r < 0.92:
        return mutate_json(data, rng, registry_ops)
    return mutate_weights(data, rng)

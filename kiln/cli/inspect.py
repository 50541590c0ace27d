"""`kiln inspect model.engine`: what the engine is made of — layers, what each covers, kernels, precisions,
shapes; rejected fusions and why; the memory plan; build metadata. --profile adds per-layer times."""
from __future__ import annotations

import argparse

from .buildflags import add_build_flags
from .output import emit
from .shapes import parse_shapes


def add_parser(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("inspect", parents=[common], help="show an engine's layers, fusions, memory and metadata",
                       description="Show an engine's per-layer table (name, ONNX nodes it covers, kernel, precision, "
                                   "output shapes), the fusions that were rejected and why, the memory plan and the "
                                   "build metadata. Given an ONNX file, builds it in memory first.")
    p.add_argument("model", help="an engine file, or an ONNX model")
    p.add_argument("--profile", action="store_true",
                   help="run the engine and add each layer's time (median over --runs) and share of the total")
    p.add_argument("--runs", type=int, default=10, metavar="N", help="inferences timed by --profile (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs used by --profile")
    p.add_argument("--plot", metavar="FILE.png", help="draw the per-layer time breakdown (implies --profile; "
                                                     "needs matplotlib)")
    p.add_argument("--onnx-out", metavar="FILE.onnx",
                   help="write the optimized graph as ONNX for Netron (fused layers are kiln-domain nodes that "
                        "list the original nodes in their kiln_covers attribute)")
    p.add_argument("--passes", action="store_true", help="also list the build's passes and their times")
    add_build_flags(p)
    return p


def run(args) -> int:
    from .loading import open_engine
    engine = open_engine(args.model, args)
    doc = describe(engine)
    if args.profile or args.plot:
        from .inputs import gather_inputs
        from .layerprof import profile_layers
        shapes = parse_shapes(args.shapes) if args.shapes else None
        inputs = gather_inputs(engine.inputs, engine.profiles, shapes, {}, [], args.seed)
        doc["profile"] = profile_layers(engine, inputs, runs=args.runs)
        from .layerprof import latency_check
        if (warning := latency_check(engine, inputs, doc["profile"], runs=args.runs)) is not None:
            doc["profile_warning"] = warning
    if args.plot:
        from .layerprof import plot_layers
        plot_layers(doc["profile"], args.plot, f"{args.model} on {engine.device}")
    if args.onnx_out:
        import onnx
        from ..frontend.onnx_export import export_onnx
        from ..passes.context import symbol_bounds
        from ..passes.propagate import propagate, symbolic_types
        times = {r["name"]: r["ms"] for r in doc.get("profile") or []}  # with --profile
        info = {l["name"]: {"kernel": l["kernel"], "precision": l["precision"],
                            **({"time_ms": times[l["name"]]} if times.get(l["name"]) is not None else {})}
                for l in doc["layers"]}
        # The profiles' bounds for the symbolic dims, and a dim the profiles fix at its one size: the engine was
        # specialized to them (a fixed dim may be baked into its layers), so propagating at probe sizes fails.
        declared = {v.name: tuple(getattr(v.type, "shape", None) or ()) for v in engine.graph.inputs}
        bounds = symbol_bounds(declared, engine.profiles)
        fixed = {s: lo for s, (lo, hi) in bounds.items() if lo == hi}
        shapes = {n: tuple(fixed.get(d, d) if isinstance(d, str) else d for d in shape) for n, shape in declared.items()}
        types = symbolic_types(engine.graph, propagate(engine.graph, shapes, registry=engine.registry,
                                                       bounds={s: b for s, b in bounds.items() if s not in fixed}))
        model = export_onnx(engine.graph, engine.output_names, info, types)
        onnx.checker.check_model(model)  # what Netron and other tools expect
        onnx.save(model, args.onnx_out)
    text = lambda: render(doc, args.passes) + (  # noqa: E731
        f"\n\nper-layer plot written to {args.plot}" if args.plot else "") + (
        f"\n\noptimized graph written to {args.onnx_out} (open it in Netron)" if args.onnx_out else "")
    emit(args, text, doc)
    return 0


def describe(engine) -> dict:
    h, r = engine.header, engine.report
    cfg = h.get("config", {})
    quant = dict(getattr(r, "quantization", None) or {})
    layers = [dict(vars(l)) for l in r.layers] if r else []
    for l in layers:  # a quantized layer computes in int8/fp8 though its output type may be float
        if l["name"] in quant.get("layers", {}):
            l["precision"] = f"{quant['layers'][l['name']]}->{l['precision']}"
    return {
        "metadata": {"created": h.get("created"), "producer": h.get("producer"), "device": h.get("device"),
                     "built_for": h.get("built_for", h.get("device")), "versions": h.get("versions"),
                     "signed_by": engine.signed_by, "refittable": engine.source_graph is not None,
                     "config": {k: v for k, v in cfg.items() if k != "profiles"},
                     "profiles": cfg.get("profiles", [])},
        "inputs": [_io(i) for i in engine.inputs],
        "outputs": [_io(o) for o in engine.outputs],
        "layers": layers,
        "quantization": quant,
        "rejections": r.rejections if r else [],
        "fusions": r.fusions if r else {},
        "memory": r.memory if r else {},
        "notes": r.notes if r else [],
        "load_notes": list(engine.load_notes),  # what loading here changed (another device, replaced tactics)
        "passes": [list(p) for p in r.pass_seconds] if r else [],
        "onnx_nodes": r.onnx_nodes if r else None,
        "build_seconds": r.build_seconds if r else None,
    }


def _io(t) -> dict:
    return {"name": t.name, "dtype": t.dtype.short if t.dtype is not None else "?",
            "shape": ["?" if d is None else d for d in t.shape]}


def render(doc: dict, passes: bool = False) -> str:
    m = doc["metadata"]
    dev = m["device"] or {}
    cfg = m["config"]
    flags = [k for k in ("fp16", "bf16", "int8", "fp8") if cfg.get(k)] or ["fp32"]
    out = ["== engine ==",
           f"built {m['created']} by kiln {(m['versions'] or {}).get('kiln')} (torch {(m['versions'] or {}).get('torch')})"
           f"{'; model from ' + m['producer'] if m['producer'] else ''}",
           f"device: {dev.get('type')} {dev.get('name', '')}".rstrip()
           + (f" (built for {m['built_for'].get('type')} {m['built_for'].get('name', '')})".rstrip()
              if m.get("built_for") not in (None, m["device"]) else "")
           + ("; refittable" if m.get("refittable") else "")
           + (f"; signed by key {m['signed_by']}" if m.get("signed_by") else ""),
           f"precisions allowed: {', '.join(flags)}; tf32 {'on' if cfg.get('tf32') else 'off'}; "
           f"opt level {cfg.get('optimization_level')}; cuda graphs {'on' if cfg.get('cuda_graphs') else 'off'}"]
    for i, p in enumerate(m["profiles"]):
        out.append(f"profile {i}: " + "; ".join(f"{n}: min {p['min'][n]} opt {p['opt'][n]} max {p['max'][n]}"
                                                  for n in p["min"]))
    for kind in ("inputs", "outputs"):
        out.append(f"{kind}: " + ", ".join(f"{t['name']} {t['dtype']}[{','.join(map(str, t['shape']))}]"
                                            for t in doc[kind]))
    prof = {r["name"]: r for r in doc.get("profile", [])}
    out.append("")
    out.append(f"== layers: {len(doc['layers'])} (from {doc['onnx_nodes']} ONNX nodes) ==")
    out.append(_layer_table(doc["layers"], prof))
    if prof:
        total = sum(r["ms"] for r in prof.values())
        top = sorted(prof.values(), key=lambda r: r["ms"], reverse=True)[:5]
        out.append(f"total {total:.4f} ms per inference (median of runs, layer by layer); slowest: "
                   + ", ".join(f"{r['name']} {r['share'] * 100:.1f}%" for r in top))
        if doc.get("profile_warning"):
            out.append(f"warning: {doc['profile_warning']}")
    out.append("")
    if doc["fusions"]:
        out.append("rewrites applied: " + ", ".join(f"{k} x{v}" for k, v in sorted(doc["fusions"].items())))
    out.append(f"== rejected fusions: {len(doc['rejections'])} ==")
    for r in doc["rejections"]:
        out.append(f"  {r['rule']}: {', '.join(r['nodes'])}: {r['reason']}")
    q = doc.get("quantization") or {}
    if q:
        out.append("")
        out.append("== quantization ==")
        for k, v in q.items():
            if k == "layers":
                out.append(f"{len(v)} quantized layers: " + ", ".join(f"{n} {p}" for n, p in list(v.items())[:8])
                           + (" ..." if len(v) > 8 else ""))
            elif k == "scales":  # one per quantized tensor: the count here, the values in --json
                out.append(f"activation scales of {len(v)} tensors (kept for refits; see --json)")
            else:
                out.append(f"{k}: {v}")
    mem = doc["memory"]
    out.append("")
    out.append("== memory ==")
    if mem:
        out.append(f"activation arena {_mib(mem.get('arena_bytes', 0))} (lower bound "
                   f"{_mib(mem.get('lower_bound_bytes', 0))}; without reuse {_mib(mem.get('naive_bytes', 0))})")
    else:
        out.append("no static memory plan (dynamic shapes without a profile)")
    for n in doc["notes"]:
        out.append(f"note: {n}")
    for n in doc.get("load_notes", []):
        out.append(f"load note: {n}")
    if passes:
        out.append("")
        out.append("== passes ==")
        out += [f"  {name:<36} {s * 1000:9.2f} ms" for name, s in doc["passes"]]
    return "\n".join(out)


def _layer_table(layers: list[dict], prof: dict) -> str:
    head = ["layer", "covers", "kernel", "prec", "output shapes"] + (["ms", "share"] if prof else [])
    rows = [head]
    for l in layers:
        covers = ", ".join(l["covers"][:3]) + (f" +{len(l['covers']) - 3}" if len(l["covers"]) > 3 else "")
        shapes = " ".join("x".join(map(str, s)) if s is not None else "?" for s in l["output_shapes"])
        row = [l["name"], covers, l["kernel"], l["precision"], shapes]
        if prof:
            p = prof.get(l["name"])
            row += [f"{p['ms']:.4f}", f"{p['share'] * 100:.1f}%"] if p else ["", ""]
        rows.append(row)
    widths = [min(max(len(r[i]) for r in rows), 40) for i in range(len(head))]
    return "\n".join("  ".join(c[:w].ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"

"""`kiln compare model.onnx [model.engine]`: Kiln's outputs against onnxruntime (or onnx.reference) on the
same inputs; --per-layer finds the first layer whose intermediate result diverges."""
from __future__ import annotations

import argparse

import numpy as np

from .buildflags import add_build_flags
from .output import emit
from .errors import CLIError

OUTPUTS_DIFFER = 3  # the comparison ran and failed; 1 is a tool error (the comparison could not run)
from .shapes import parse_name_files, parse_shapes


def add_parser(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", parents=[common], help="check Kiln's outputs against onnxruntime",
                       description="Run the ONNX model with onnxruntime (fallback: onnx.reference) and with Kiln "
                                   "(the engine given, or one built in memory) on the same inputs, and report per "
                                   "output the max absolute and relative error, mean error, cosine similarity and "
                                   "error percentiles. Exits 1 when an output is outside --atol/--rtol.")
    p.add_argument("model", help="the ONNX model (the reference runs it)")
    p.add_argument("engine", nargs="?", help="a Kiln engine built from it (default: build one in memory)")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="relative tolerance (default 1e-3); an element passes when |kiln - ref| <= atol + rtol*|ref|")
    p.add_argument("--reference", choices=("auto", "onnxruntime", "onnx-reference"), default="auto",
                   help="what to compare against (auto: onnxruntime if installed, else onnx.reference)")
    p.add_argument("--per-layer", action="store_true",
                   help="compare every intermediate tensor (Kiln's interpreter on the unoptimized graph vs the "
                        "reference with all values as outputs) and name the first layer that diverges")
    p.add_argument("--input", metavar="NAME:FILE", action="append", default=[], help="an input from a .npy file")
    p.add_argument("--inputs", metavar="FILE.npz", action="append", default=[], help="inputs from an .npz file")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    add_build_flags(p)
    return p


def metrics(kiln_out, ref, atol: float, rtol: float) -> dict:
    a = np.asarray(kiln_out)
    b = np.asarray(ref)
    if a.shape != b.shape:
        return {"ok": False, "problem": f"shape {list(a.shape)} vs reference {list(b.shape)}"}
    if a.dtype.kind in "OSU" or b.dtype.kind in "OSU":
        same = bool(np.array_equal(a, b))
        return {"ok": same, "problem": None if same else "values differ"}
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if x.size == 0:
        return {"ok": True, "max_abs": 0.0, "max_rel": 0.0, "mean_abs": 0.0, "cosine": 1.0, "mismatches": 0, "size": 0}
    nan_mismatch = int(np.sum(np.isnan(x) != np.isnan(y)))
    finite = ~(np.isnan(x) | np.isnan(y))
    err = np.abs(x - y)
    err = np.where(finite & (x == y), 0.0, err)  # inf == inf counts as equal
    bad = (err > atol + rtol * np.abs(y)) & finite
    rel = err / np.maximum(np.abs(y), 1e-12)
    e = err[finite]
    nx, ny = np.linalg.norm(x[finite]), np.linalg.norm(y[finite])
    cos = float(np.dot(x[finite], y[finite]) / (nx * ny)) if nx > 0 and ny > 0 else float(nx == ny)
    mism = int(bad.sum()) + nan_mismatch
    return {"ok": mism == 0, "max_abs": float(e.max()) if e.size else 0.0,
            "max_rel": float(rel[finite].max()) if e.size else 0.0, "mean_abs": float(e.mean()) if e.size else 0.0,
            "cosine": cos, "p50": float(np.percentile(e, 50)) if e.size else 0.0,
            "p90": float(np.percentile(e, 90)) if e.size else 0.0, "p99": float(np.percentile(e, 99)) if e.size else 0.0,
            "mismatches": mism, "size": int(x.size)}


def reference_runner(model, which: str):
    """A function inputs -> {name: array} over the given ModelProto, and the name of what runs it."""
    if which in ("auto", "onnxruntime"):
        try:
            import onnxruntime as ort
        except ImportError:
            if which == "onnxruntime":
                raise CLIError("--reference onnxruntime: onnxruntime is not installed (pip install onnxruntime)")
        else:
            try:
                return _ort_runner(ort, model)
            except Exception as e:  # noqa: BLE001 - ORT raises its own types; say why, then fall back
                if which == "onnxruntime":
                    raise CLIError(f"onnxruntime cannot run this model: {str(e).strip().splitlines()[-1]}") from None
                why = str(e).strip().splitlines()[-1][:160]
                runner, _ = _reference_evaluator(model)
                return runner, f"onnx.reference (onnxruntime could not load the model: {why})"
    return _reference_evaluator(model)


def _ort_runner(ort, model):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every value as written
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        if "IR version" not in str(e) or model.ir_version <= 10:
            raise
        # A newer onnx package stamps an IR version this onnxruntime does not know yet; the graph itself
        # rarely needs it, so try once with IR 10 (ONNX 1.16, enough for opset 21).
        older = type(model)()
        older.CopyFrom(model)
        older.ir_version = 10
        sess = ort.InferenceSession(older.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return (lambda feed: dict(zip(names, sess.run(names, feed)))), f"onnxruntime {ort.__version__}"


def _reference_evaluator(model):
    from onnx.reference import ReferenceEvaluator
    ev = ReferenceEvaluator(model)
    return (lambda feed: dict(zip(ev.output_names, ev.run(None, feed)))), "onnx.reference"


def _check_same_io(model, engine, model_path: str, engine_path: str | None) -> None:
    """The engine must be built from this model: the same graph inputs (initializers excluded) and outputs."""
    inits = {i.name for i in model.graph.initializer}
    want_in = [i.name for i in model.graph.input if i.name not in inits]
    want_out = [o.name for o in model.graph.output]
    got_in, got_out = [i.name for i in engine.inputs], [o.name for o in engine.outputs]
    if sorted(want_in) != sorted(got_in) or not set(got_out) <= set(want_out):
        raise CLIError(f"engine {engine_path or model_path!r} was not built from {model_path!r}: its inputs "
                       f"{got_in} and outputs {got_out}, the model's {want_in} and {want_out}")


def run(args) -> int:
    from .inputs import gather_inputs
    from .loading import open_engine, open_onnx
    model = open_onnx(args.model)
    engine = open_engine(args.engine or args.model, args)
    _check_same_io(model, engine, args.model, args.engine)
    shapes = parse_shapes(args.shapes) if args.shapes else None
    files = {k: v for spec in args.input for k, v in parse_name_files(spec, "--input").items()}
    inputs = gather_inputs(engine.inputs, engine.profiles, shapes, files, args.inputs, args.seed)
    ref_run, ref_name = reference_runner(model, args.reference)
    ref = ref_run(inputs)
    got = engine.create_execution_context().infer(inputs)
    results = {name: metrics(got[name], ref[name], args.atol, args.rtol) for name in got if name in ref}
    missing = [n for n in got if n not in ref]
    doc = {"reference": ref_name, "atol": args.atol, "rtol": args.rtol, "outputs": results}
    if missing:
        doc["not_compared"] = missing
    if args.per_layer:
        doc["per_layer"] = per_layer(model, engine, inputs, args)
    pl = doc.get("per_layer", {})
    ok = (all(r["ok"] for r in results.values()) and pl.get("first_divergent") is None
          and pl.get("first_divergent_engine_layer") is None)
    doc["ok"] = ok
    emit(args, lambda: render(doc), doc)
    return 0 if ok else OUTPUTS_DIFFER


def per_layer(model, engine, inputs: dict, args) -> dict:
    """Every intermediate value vs the reference, twice: Kiln's interpreter on the parsed (unoptimized) graph
    finds a wrong kernel; the engine's own layers (whose outputs keep their ONNX names) find the layer where an
    optimization (fusion, reduced precision) moved the numbers."""
    import onnx
    from .. import parse
    from ..runtime.interpreter import Interpreter
    graph = parse(model)
    interp = Interpreter(graph, "cpu")
    env, _ = interp._bind_inputs(inputs)
    interp.run_graph(graph, env, free=False)  # free=False keeps every intermediate value in env
    ours = {}
    for n in graph.nodes:
        for v in n.outputs:
            if v is not None and v.id in env and hasattr(env[v.id], "numpy"):
                ours[v.name] = env[v.id]
    full = onnx.ModelProto()
    full.CopyFrom(model)
    have = {o.name for o in full.graph.output}
    order = [(n.name or f"{n.op_type}_{i}", n.op_type, list(n.output)) for i, n in enumerate(model.graph.node)]
    for _, _, outs in order:
        full.graph.output.extend(onnx.ValueInfoProto(name=o) for o in outs if o and o not in have)
    ref_run, _ = reference_runner(full, args.reference)
    ref = ref_run(inputs)
    from ..ir.convert import torch_to_numpy
    # A value nothing reads (Dropout's mask, say) cannot change the outputs: shown, but never "the" divergence.
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    rows, first = [], None
    for name, op, outs in order:
        for o in outs:
            if o in ours and o in ref and ref[o] is not None:
                m = metrics(torch_to_numpy(ours[o].cpu()), ref[o], args.atol, args.rtol)
                rows.append({"node": name, "op": op, "value": o, "unused": o not in read, **m})
                if not m["ok"] and first is None and o in read:
                    first = {"node": name, "op": op, "value": o}
    eng_rows, eng_first, other_type = [], None, []
    for name, op, value, got in _engine_values(engine, inputs):
        if value in ref and ref[value] is not None:
            if got.dtype != np.asarray(ref[value]).dtype:
                # Kept in another type than the model's (int8 between quantized layers): other numbers by design.
                other_type.append(f"{value} ({got.dtype})")
                continue
            m = metrics(got, ref[value], args.atol, args.rtol)
            eng_rows.append({"node": name, "op": op, "value": value, **m})
            if not m["ok"] and eng_first is None:
                eng_first = {"node": name, "op": op, "value": value}
    return {"compared": len(rows), "first_divergent": first, "values": rows,
            "engine_compared": len(eng_rows), "first_divergent_engine_layer": eng_first, "engine_values": eng_rows,
            "engine_other_type": other_type}


def _engine_values(engine, inputs: dict) -> list:
    """(layer, op, value name, array) for every layer output of the engine, in execution order."""
    import torch
    from ..ir.convert import numpy_to_torch, torch_to_numpy
    ids = {v.name: v.id for v in engine.graph.inputs}
    env = {ids[k]: numpy_to_torch(np.asarray(v))[0].to(engine.device) for k, v in inputs.items()}
    seen = []

    def hook(step, env):
        for v in step.node.outputs:
            x = env.get(v.id) if v is not None else None
            if isinstance(x, torch.Tensor):
                op = (f"{step.node.domain}::" if step.node.domain else "") + step.node.op_type
                seen.append((step.node.label, op, v.name, torch_to_numpy(x.detach().cpu(), v.dtype)))

    with torch.inference_mode():
        engine.program.run(env, hook=hook)
    return seen


def render(doc: dict) -> str:
    out = [f"reference: {doc['reference']}; tolerance: |kiln - ref| <= {doc['atol']:g} + {doc['rtol']:g} * |ref|"]
    head = f"{'output':<20} {'max abs':>10} {'max rel':>10} {'mean abs':>10} {'cosine':>10} {'p50':>9} {'p90':>9} " \
           f"{'p99':>9} {'mismatch':>12}  result"
    out.append(head)
    for name, r in doc["outputs"].items():
        out.append(_row(name, r))
    for n in doc.get("not_compared", []):
        out.append(f"{n:<20} (not an output of the reference)")
    if "per_layer" in doc:
        pl = doc["per_layer"]
        out.append("")
        out.append(f"per layer, engine: {pl['engine_compared']} layer outputs compared")
        if pl["engine_other_type"]:
            out.append(f"not compared, stored in another type than the model's: {', '.join(pl['engine_other_type'])}")
        f = pl["first_divergent_engine_layer"]
        if f is None:
            out.append("every engine layer output within tolerance")
        else:
            out.append(f"first divergent engine layer: {f['node']} ({f['op']}), value {f['value']!r}")
            out += [_row(r["value"], r) for r in pl["engine_values"] if r["value"] == f["value"]]
        out.append(f"per layer, unoptimized graph (Kiln's interpreter): {pl['compared']} intermediate values "
                   f"compared")
        unused_bad = [r["value"] for r in pl["values"] if r["unused"] and not r["ok"]]
        if unused_bad:
            out.append(f"outside tolerance but read by nothing (ignored): {', '.join(unused_bad[:5])}")
        if pl["first_divergent"] is None:
            out.append("all intermediate values that reach an output are within tolerance")
        else:
            f = pl["first_divergent"]
            out.append(f"first divergent layer: {f['node']} ({f['op']}), value {f['value']!r}")
            out.append(head.replace("output  ", "value   "))
            seen = False
            for r in pl["values"]:
                seen = seen or r["value"] == f["value"]
                if seen:
                    out.append(_row(r["value"], r))
                    if len(out) > 40:
                        break
    out.append("PASS" if doc["ok"] else "FAIL: outside tolerance")
    return "\n".join(out)


def _row(name: str, r: dict) -> str:
    from ..engine.report import shorten
    if "max_abs" not in r:
        return f"{shorten(name, 20):<20} {r.get('problem') or 'equal'}  {'ok' if r['ok'] else 'FAIL'}"
    return (f"{shorten(name, 20):<20} {r['max_abs']:>10.3g} {r['max_rel']:>10.3g} {r['mean_abs']:>10.3g} {r['cosine']:>10.6f} "
            f"{r.get('p50', 0):>9.2g} {r.get('p90', 0):>9.2g} {r.get('p99', 0):>9.2g} "
            f"{r['mismatches']:>5}/{r['size']:<6}  {'ok' if r['ok'] else 'FAIL'}")

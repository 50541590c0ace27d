"""The accuracy target for fp16/bf16 builds without int8: keep the most sensitive layers in float32.

Runs just before lower_precision. The lowered graph is measured against float32 on the validation (or
calibration) data; when outside the target, layers are ranked by their local error (each layer's kernel
run on its own inputs rounded to T, against its float32 output, in one float run) and pinned to fp32,
most sensitive first, until the target holds. lower_precision then honours those pins; the report's
``quantization["accuracy"]`` records every measurement.
"""
from __future__ import annotations

import time

import torch

from ..ir.graph import Graph
from ..ops import KernelContext
from ..quant.accuracy import compare, resolve_target
from ..quant.calibrate import copy_graph, run_graph
from .context import PassContext
from .precision import lower_precision, target_dtype

MAX_STEPS = 24  # layers put back to float32 at most, one measurement each
# Seconds of measuring after which the default check's search for layers to keep in float32 stops (said in the
# report): at a large opt batch one measurement of a CNN is seconds, and a model whose target cannot be met (a
# random-weight RegNet in fp16, whose eager fp16 is as far off) took 70 s of a GPU build for nothing. A target the
# user set is searched in full: stopping it on the clock would make the engine depend on the machine's load.
FIT_BUDGET_S = 20.0


def fit_precision_target(graph: Graph, ctx: PassContext) -> bool:
    cfg = ctx.config
    t = target_dtype(ctx)
    target = None if t is None else resolve_target(cfg.accuracy_target, t.short)
    if target is None or "quantization" in graph.meta:
        return False  # no target, nothing lowered, or the int8 pass measured already
    from .quantize_int8 import Data
    batches = Data(graph, ctx).validation()
    info: dict = {"target": {k: v for k, v in vars(target).items() if v is not None}, "precision": t.short}
    if not batches:
        # No data given: a generated sample still catches what fp16 breaks for any input (overflow, a kernel
        # wrong in low precision); real inputs measure better, and the report says which was used.
        batches = generated_sample(graph, ctx)
        info["data"] = "generated sample (random inputs at the opt shapes): give validation_data for real data"
    if not batches:
        ctx.notes.append("accuracy target not checked: no validation_data, no int8_calibrator data, and no "
                         "sample could be generated (inputs without static shapes at the opt profile)")
        graph.meta["quantization"] = {"accuracy": {**info, "checked": False}}
        return False
    try:
        ref = run_graph(graph, batches, cfg.device, ctx.registry)
    except Exception as e:  # noqa: BLE001 - a generated sample the model rejects (ids out of a table's range)
        if "data" not in info:
            raise
        ctx.notes.append(f"accuracy target not checked: the model cannot run on a generated sample "
                         f"({type(e).__name__}); give validation_data")
        graph.meta["quantization"] = {"accuracy": {**info, "checked": False}}
        return False

    def measure(pinned: list[str]) -> dict:
        g = copy_graph(graph)
        _pin(g, pinned)
        lower_precision(g, PassContext(g, cfg, ctx.registry, ctx.input_shapes))
        return compare(ref, run_graph(g, batches, cfg.device, ctx.registry))

    start = time.perf_counter()
    m = measure([])
    info.update(checked=True, batches=len(batches), all_lowered=_r(m), kept=[])
    pinned: list[str] = []
    stopped = ""
    if not target.met(m):
        local = _local_errors(graph, ctx, batches, t.torch)
        order = sorted(local, key=lambda n: target.badness(local[n]), reverse=True)[:MAX_STEPS]
        for name in order:
            if cfg.accuracy_target == "default" and time.perf_counter() - start > FIT_BUDGET_S:
                stopped = f"; the search stopped after {FIT_BUDGET_S:.0f} s of measuring"
                break
            pinned.append(name)
            m = measure(pinned)
            info["kept"].append({"layer": name, "precision": "fp32", "local": _r(local[name]), "after_keeping": _r(m)})
            if target.met(m):
                break
    info["measured"], info["met"] = _r(m), target.met(m)
    if stopped:
        info["stopped"] = f"after {FIT_BUDGET_S:.0f} s"
    graph.meta["quantization"] = {"calibration": None, "layers": {}, "accuracy": info}
    ctx.notes.append(f"accuracy ({t.short}): cosine {m['cosine']:.6f}, max relative error {m['max_rel_error']:.6f} "
                     f"vs float32; target {info['target']} {'met' if info['met'] else 'NOT met'}"
                     + (f"; kept in fp32: {', '.join(pinned)}" if pinned else "") + stopped)
    _pin(graph, pinned)
    return bool(pinned)


def _same_values(registry) -> frozenset[str]:
    """Ops an integer input passes through unchanged in value on its way to an index or a one-hot comparison:
    the registry's views, a broadcast and a cast."""
    return registry.ops_with("view") | {"Expand", "Cast"}


def _constant_source(v, same: frozenset[str]):
    """The constant whose values ``v`` carries (through the value-preserving ops ``same``), or None."""
    for _ in range(16):
        if v is None:
            return None
        if v.const is not None:
            return v.const
        p = v.producer
        if p is None or p.op_type not in same or not p.inputs:
            return None
        v = p.inputs[0]
    return None


def _value_readers(v, same: frozenset[str]):
    """The (node, slot) readers of integer input ``v``'s values, through the value-preserving ops ``same`` and
    Gather's data slot (which selects some of them)."""
    frontier, seen = [v], set()
    while frontier:
        x = frontier.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        for n, slot in x.uses:
            if (n.op_type in same or n.op_type == "Gather") and slot == 0 and n.outputs and n.outputs[0] is not None:
                frontier.append(n.outputs[0])
            else:
                yield n, slot


def _index_range(graph: Graph, v, registry) -> int | None:
    """How many values integer input ``v`` ranges over, from how the model reads it (the smallest over its
    readers, through value-preserving ops): the rows of the tables it indexes (Gather), the depth of its
    one-hot encoding (OneHot's depth, or the exporters' Equal against a constant range, as jax2tf writes
    one_hot: magika's byte values). None when nothing says: the input is then zeros, valid anywhere."""
    same = _same_values(registry)
    sizes = []
    for n, slot in _value_readers(v, same):
        if n.op_type == "Gather" and slot == 1 and n.inputs[0] is not None and n.inputs[0].const is not None:
            table = n.inputs[0].const
            axis = int(n.attrs.get("axis", 0))
            if table.dim() and -table.dim() <= axis < table.dim():
                sizes.append(int(table.shape[axis]))
        elif n.op_type == "OneHot" and slot == 0 and len(n.inputs) > 1 and n.inputs[1] is not None \
                and n.inputs[1].const is not None and n.inputs[1].const.numel() == 1:
            sizes.append(int(n.inputs[1].const.reshape(()).item()))
        elif n.op_type == "Equal" and len(n.inputs) == 2:
            c = _constant_source(n.inputs[1 - slot], same)
            if c is not None and c.numel() > 1 and not c.dtype.is_floating_point and int(c.min()) >= 0:
                sizes.append(int(c.max()) + 1)  # one-hot as x == arange(depth)
    sizes = [s for s in sizes if s > 0]
    return min(sizes) if sizes else None


def _compared_value(v, registry) -> int | None:
    """The number an integer input is tested against with Equal (a sample rate, a mode flag: silero-vad checks
    ``sr == 16000`` and runs a branch made for 16 kHz frames), or None. A sample of zeros would take the other
    branch with frames of the wrong length, and the build-time timing runs failed on it."""
    same = _same_values(registry)
    for n, slot in _value_readers(v, same):
        if n.op_type == "Equal" and len(n.inputs) == 2:
            c = _constant_source(n.inputs[1 - slot], same)
            if c is not None and c.numel() == 1 and not c.dtype.is_floating_point and c.dtype != torch.bool:
                value = int(c.reshape(()).item())
                info = torch.iinfo(v.type.dtype.torch)  # (called for integer inputs only)
                if info.min <= value <= info.max:  # else the test runs on a cast copy the input cannot fill
                    return value
    return None


def generated_sample(graph: Graph, ctx: PassContext, batches: int = 2) -> list[dict]:
    """Random inputs at the first profile's opt shapes (or the static shapes): normal floats; integers
    uniform over the rows of the tables they index (embeddings, byte tables), else the number they are tested
    against (a sample rate), else zeros (a valid index anywhere); False booleans. [] when an input's shape is not known."""
    shapes = dict(ctx.input_shapes or {})
    for p in ctx.config.profiles[:1]:
        shapes.update(p.opt)
    dev = torch.device(ctx.config.device)
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(batches):
        feed = {}
        for v in graph.inputs:
            shape, dtype = shapes.get(v.name), getattr(v.type, "dtype", None)
            if shape is None or dtype is None or not all(isinstance(d, int) for d in shape):
                return []
            rows = None if dtype.is_float or dtype.torch == torch.bool else _index_range(graph, v, ctx.registry)
            if dtype.is_float:
                x = torch.randn(tuple(shape), generator=gen).to(dtype.torch)
            elif rows:
                x = torch.randint(0, rows, tuple(shape), generator=gen).to(dtype.torch)
            elif dtype.torch != torch.bool and (value := _compared_value(v, ctx.registry)) is not None:
                x = torch.full(tuple(shape), value, dtype=dtype.torch)
            else:
                x = torch.zeros(tuple(shape), dtype=dtype.torch)
            feed[v.name] = x.to(dev)
        out.append(feed)
    return out


def _pin(graph: Graph, names: list[str]) -> None:
    """Mark layers for lower_precision to keep in float32 (node meta, kept by copies and engines)."""
    wanted = set(names)
    for n in graph.nodes:
        if n.name in wanted:
            n.meta["keep_float32"] = True


def _r(m: dict) -> dict:
    return {k: round(v, 6) for k, v in m.items()}


def _local_errors(graph: Graph, ctx: PassContext, batches: list[dict], low: torch.dtype) -> dict[str, dict]:
    """Layer name -> error of the layer computed from inputs rounded to ``low``, vs its float32 output."""
    dev = torch.device(ctx.config.device)
    cands = {}
    for n in graph.nodes:
        if n.name and not any(True for _ in n.subgraphs()) and n.op_type != "Cast" and n.outputs \
                and n.outputs[0] is not None and ctx.dtype(n.outputs[0]) is not None and ctx.dtype(n.outputs[0]).is_float:
            cands[n.outputs[0].id] = n
    refs: dict[str, list] = {}
    gots: dict[str, list] = {}
    box: dict = {}

    def hook(vid, value):
        n = cands.get(vid)
        if n is None or not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
            return
        env = box["env"]
        args = []
        for v in n.inputs:
            a = None if v is None else (v.const.to(dev) if v.const is not None else env.get(v.id))
            args.append(a.to(low) if isinstance(a, torch.Tensor) and a.dtype == torch.float32 else a)
        kd = ctx.registry.get(n.domain, n.op_type)
        try:
            out = kd.kernel(KernelContext(opset=graph.opsets.get("", 21), device=dev, num_outputs=len(n.outputs)),
                            args, n.attrs)
        except Exception:  # noqa: BLE001 - a kernel without a low-precision path: not ranked
            return
        out = out[0] if isinstance(out, tuple) else out
        if isinstance(out, torch.Tensor) and out.shape == value.shape:
            refs.setdefault(n.name, []).append([value.float().cpu()])
            gots.setdefault(n.name, []).append([out.float().cpu()])

    run_graph(graph, batches, ctx.config.device, ctx.registry, hook, box)
    return {k: compare(refs[k], gots[k]) for k in refs}

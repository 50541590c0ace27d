"""Control flow: If, Loop and Scan, each running its subgraph(s) through ``ctx.run_graph``.

Subgraphs see outer-scope values by themselves (the interpreter resolves them), so a kernel passes only
a body's formal inputs. Outputs come back as a tuple, since a single output may itself be a sequence.
"""
from __future__ import annotations

import torch

from ..ir.types import TensorType
from .registry import KernelContext, OpSet

ops = OpSet("control")


def _truth(cond: torch.Tensor, op: str) -> bool:
    if cond.numel() != 1:
        raise ValueError(f"{op} condition must hold a single element, got shape {tuple(cond.shape)}")
    return bool(cond.reshape(-1)[0].item())


def _empty_scan_output(value, device: torch.device) -> torch.Tensor:
    """The (0, ...) result of a scan output that no iteration produced, shaped from the body's static type."""
    t = value.type
    shape = t.shape if isinstance(t, TensorType) and t.shape is not None else ()
    dims = [d if isinstance(d, int) else 0 for d in shape]
    dtype = t.dtype.torch if isinstance(t, TensorType) and t.dtype is not None else torch.float32
    return torch.zeros([0] + dims, dtype=dtype, device=device)


@ops.op("If", host_inputs=(0,))  # the condition is read as a Python bool
def if_(ctx: KernelContext, inputs: list, attrs: dict):
    """Run then_branch or else_branch (no inputs of their own) and return its outputs."""
    branch = attrs["then_branch"] if _truth(inputs[0], "If") else attrs["else_branch"]
    return tuple(ctx.run_graph(branch, []))


@ops.op("Loop", host_inputs=(0,))  # the trip count is read as a Python int
def loop(ctx: KernelContext, inputs: list, attrs: dict):
    """Generic loop: runs while (M absent or i < M) and cond; carries N values, stacks K scan outputs.

    Body inputs are (iteration_num, cond, carried...); its outputs (cond, carried..., scan_elts...).
    A missing cond counts as true; the body's cond output still decides whether to go on.
    """
    body = attrs["body"]
    max_trip, cond = inputs[0], inputs[1] if len(inputs) > 1 else None
    carried = list(inputs[2:])
    n = len(carried)
    k = len(body.outputs) - 1 - n
    trips = None if max_trip is None else int(max_trip.reshape(-1)[0].item())
    cond_t = cond if cond is not None else torch.tensor(True, device=ctx.device)
    go = _truth(cond_t, "Loop")
    scans: list[list] = [[] for _ in range(k)]
    i = 0
    while go and (trips is None or i < trips):
        it = torch.tensor(i, dtype=torch.int64, device=ctx.device)
        outs = ctx.run_graph(body, [it, cond_t] + carried)
        cond_t, carried = outs[0], list(outs[1:1 + n])
        for acc, v in zip(scans, outs[1 + n:]):
            acc.append(v)
        go = _truth(cond_t, "Loop")
        i += 1
    stacked = [torch.stack(acc) if acc else _empty_scan_output(body.outputs[1 + n + j], ctx.device)
               for j, acc in enumerate(scans)]
    return tuple(carried + stacked)


@ops.op("Scan")
def scan(ctx: KernelContext, inputs: list, attrs: dict):
    """Iterate the body over slices of the M scan inputs, carrying N state values (opset 8 and 9+)."""
    if ctx.opset < 9:
        return _scan8(ctx, inputs, attrs)
    body, m = attrs["body"], attrs["num_scan_inputs"]
    states, xs = list(inputs[:len(inputs) - m]), inputs[len(inputs) - m:]
    in_axes = attrs.get("scan_input_axes") or [0] * m
    in_dirs = attrs.get("scan_input_directions") or [0] * m
    xs = [_scan_slices(x, a, d) for x, a, d in zip(xs, in_axes, in_dirs)]
    return tuple(_scan_run(ctx, body, states, xs, attrs))


def _scan_slices(x: torch.Tensor, axis: int, reverse: int) -> list[torch.Tensor]:
    slices = list(torch.unbind(x, dim=axis + x.dim() if axis < 0 else axis))
    return slices[::-1] if reverse else slices


def _scan_run(ctx: KernelContext, body, states: list, xs: list[list], attrs: dict) -> list:
    """The opset 9+ loop proper: returns final states then scan outputs (stacked per their axes/directions)."""
    n = len(states)
    steps = {len(s) for s in xs}
    if len(steps) > 1:
        raise ValueError(f"Scan inputs differ in scan-axis length: {sorted(steps)}")
    steps_n = steps.pop() if steps else 0
    k = len(body.outputs) - n
    outs_acc: list[list] = [[] for _ in range(k)]
    for t in range(steps_n):
        outs = ctx.run_graph(body, states + [s[t] for s in xs])
        states = list(outs[:n])
        for acc, v in zip(outs_acc, outs[n:]):
            acc.append(v)
    out_axes = attrs.get("scan_output_axes") or [0] * k
    out_dirs = attrs.get("scan_output_directions") or [0] * k
    results = []
    for j, acc in enumerate(outs_acc):
        if not acc:
            results.append(_empty_scan_output(body.outputs[n + j], ctx.device).movedim(0, out_axes[j]))
            continue
        if out_dirs[j]:
            acc = acc[::-1]
        axis = out_axes[j]
        results.append(torch.stack(acc, dim=axis + acc[0].dim() + 1 if axis < 0 else axis))
    return states + results


def _scan8(ctx: KernelContext, inputs: list, attrs: dict) -> tuple:
    """Opset 8 Scan: axis 0 is a batch axis and axis 1 the scan axis; sequence_lens trims each batch item.

    Positions past an item's length are left as zeros in the scan outputs, as the spec's padding.
    """
    body, m = attrs["body"], attrs["num_scan_inputs"]
    seq_lens, rest = inputs[0], inputs[1:]
    states, xs = rest[:len(rest) - m], rest[len(rest) - m:]
    dirs = attrs.get("directions") or [0] * m
    batch, max_len = xs[0].shape[0], xs[0].shape[1]
    lens = [max_len] * batch if seq_lens is None else [int(v) for v in seq_lens.tolist()]
    per_item = []
    for b in range(batch):
        item_xs = [_scan_slices(x[b, :lens[b]], 0, d) for x, d in zip(xs, dirs)]
        per_item.append(_scan_run(ctx, body, [s[b] for s in states], item_xs, {}))
    n = len(states)
    finals = [torch.stack([r[i] for r in per_item]) for i in range(n)]
    scans = []
    for j in range(n, len(body.outputs)):
        parts = [_pad_to(r[j], max_len) for r in per_item]
        scans.append(torch.stack(parts))
    return tuple(finals + scans)


def _pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    if x.shape[0] == length:
        return x
    pad = torch.zeros((length - x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    return torch.cat([x, pad])

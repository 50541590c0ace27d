"""Sequence and optional ops.

At run time an ONNX sequence is a Python list of tensors and an empty optional is None; an optional
holding a value is just that value. Sequence ops never mutate their input list: they build a new one.
"""
from __future__ import annotations

import torch

from .registry import KernelContext, OpSet

ops = OpSet("sequence")


def _position(pos: torch.Tensor | None, default: int) -> int:
    return default if pos is None else int(pos.reshape(-1)[0].item())


def _input(inputs: list, i: int):
    return inputs[i] if len(inputs) > i else None


def _check_sequence(seq, op: str) -> list:
    if not isinstance(seq, list):
        raise TypeError(f"{op} expects a sequence input, got {type(seq).__name__}")
    return seq


# -- sequences ---------------------------------------------------------------------------------------

@ops.op("SequenceEmpty")
def sequence_empty(ctx: KernelContext, inputs: list, attrs: dict):
    """An empty sequence (the 'dtype' attribute only matters to the static element type)."""
    return ([],)


@ops.op("SequenceConstruct")
def sequence_construct(ctx: KernelContext, inputs: list, attrs: dict):
    return (list(inputs),)


@ops.op("SequenceLength")
def sequence_length(ctx: KernelContext, inputs: list, attrs: dict):
    seq = _check_sequence(inputs[0], "SequenceLength")
    return torch.tensor(len(seq), dtype=torch.int64, device=ctx.device)


@ops.op("SequenceAt")
def sequence_at(ctx: KernelContext, inputs: list, attrs: dict):
    seq = _check_sequence(inputs[0], "SequenceAt")
    pos = _position(inputs[1], 0)
    if not -len(seq) <= pos < len(seq):
        raise IndexError(f"SequenceAt position {pos} is out of range for a sequence of length {len(seq)}")
    return seq[pos]


@ops.op("SequenceErase")
def sequence_erase(ctx: KernelContext, inputs: list, attrs: dict):
    """Remove the tensor at 'position' (default: the last one); negative positions count from the back."""
    seq = _check_sequence(inputs[0], "SequenceErase")
    pos = _position(_input(inputs, 1), -1)
    if not -len(seq) <= pos < len(seq):
        raise IndexError(f"SequenceErase position {pos} is out of range for a sequence of length {len(seq)}")
    pos %= len(seq)
    return (seq[:pos] + seq[pos + 1:],)


@ops.op("SequenceInsert")
def sequence_insert(ctx: KernelContext, inputs: list, attrs: dict):
    """Insert a tensor before 'position' (default: at the end); position len(seq) appends."""
    seq = _check_sequence(inputs[0], "SequenceInsert")
    n = len(seq)
    pos = _position(_input(inputs, 2), n)
    if not -n <= pos <= n:
        raise IndexError(f"SequenceInsert position {pos} is out of range for a sequence of length {n}")
    if pos < 0:
        pos += n
    return (seq[:pos] + [inputs[1]] + seq[pos:],)


@ops.op("SplitToSequence")
def split_to_sequence(ctx: KernelContext, inputs: list, attrs: dict):
    """Split along 'axis' by a scalar chunk length, a list of lengths, or (no split) into length-1 pieces."""
    x, split = inputs[0], _input(inputs, 1)
    axis = attrs.get("axis", 0)
    axis = axis + x.dim() if axis < 0 else axis
    if split is None:
        pieces = list(torch.split(x, 1, dim=axis))
        if not attrs.get("keepdims", 1):
            pieces = [p.squeeze(axis) for p in pieces]
        return (pieces,)
    if split.dim() == 0:
        # torch.split with an int gives equal chunks and a shorter last one, as ONNX asks.
        return (list(torch.split(x, int(split.item()), dim=axis)),)
    sizes = [int(s) for s in split.tolist()]
    if sum(sizes) != x.shape[axis]:
        raise ValueError(f"SplitToSequence sizes {sizes} do not add up to dimension {x.shape[axis]} of axis {axis}")
    return (list(torch.split(x, sizes, dim=axis)),)


@ops.op("ConcatFromSequence")
def concat_from_sequence(ctx: KernelContext, inputs: list, attrs: dict):
    """Concatenate the tensors along 'axis', or stack them along a new axis when new_axis=1."""
    seq = _check_sequence(inputs[0], "ConcatFromSequence")
    if not seq:
        raise ValueError("ConcatFromSequence of an empty sequence")
    axis = attrs["axis"]
    if attrs.get("new_axis", 0):
        rank = seq[0].dim() + 1
        return torch.stack(seq, dim=axis + rank if axis < 0 else axis)
    return torch.cat(seq, dim=axis)


@ops.op("SequenceMap")
def sequence_map(ctx: KernelContext, inputs: list, attrs: dict):
    """Run 'body' once per element of the first sequence; sequence extra inputs are zipped, tensors shared."""
    seq = _check_sequence(inputs[0], "SequenceMap")
    extra = inputs[1:]
    for e in extra:
        if isinstance(e, list) and len(e) != len(seq):
            raise ValueError(f"SequenceMap sequences differ in length ({len(seq)} and {len(e)})")
    body = attrs["body"]
    results: list[list] = [[] for _ in body.outputs]
    for i, item in enumerate(seq):
        args = [item] + [e[i] if isinstance(e, list) else e for e in extra]
        for acc, out in zip(results, ctx.run_graph(body, args)):
            acc.append(out)
    return tuple(results)


# -- optionals ---------------------------------------------------------------------------------------

@ops.op("Optional")
def optional(ctx: KernelContext, inputs: list, attrs: dict):
    """An optional holding the input, or an empty optional (None) when the input is missing."""
    return (_input(inputs, 0),)


@ops.op("OptionalHasElement")
def optional_has_element(ctx: KernelContext, inputs: list, attrs: dict):
    return torch.tensor(_input(inputs, 0) is not None, dtype=torch.bool, device=ctx.device)


@ops.op("OptionalGetElement")
def optional_get_element(ctx: KernelContext, inputs: list, attrs: dict):
    """The optional's value; a plain tensor or sequence input (opset 18) passes through."""
    value = _input(inputs, 0)
    if value is None:
        raise ValueError("OptionalGetElement of an empty optional")
    return (value,)

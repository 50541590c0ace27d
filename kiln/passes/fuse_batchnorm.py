"""BatchNorm folded into the weights of the Conv / Gemm / MatMul before it.

Conv(x, W, B) -> BN(scale, bias, mean, var)  ==  Conv(x, W * s, (B - mean) * s + bias),  s = scale / sqrt(var + eps)
"""
from __future__ import annotations

import torch

from ..ir.graph import Graph, Node
from .context import PassContext
from .rewrite import const, has_subgraphs, merge_covers, new_constant, only_use, replace_uses


def _bn_factors(bn: Node) -> tuple[torch.Tensor, torch.Tensor] | str:
    """(s, t) with BN(y) = y * s + t per channel, or the reason it cannot be folded."""
    if len(bn.inputs) < 5 or any(const(v) is None for v in bn.inputs[1:5]):
        return "BatchNorm parameters are not constants"
    if bn.attrs.get("training_mode", 0):
        return "BatchNorm runs in training mode"
    if any(o is not None and o.uses for o in bn.outputs[1:]):
        return "BatchNorm's running-statistics outputs are used"
    if bn.attrs.get("spatial", 1) != 1:
        return "BatchNorm with spatial=0 (per-element statistics)"
    scale, bias, mean, var = (const(v).to(torch.float64) for v in bn.inputs[1:5])
    s = scale / torch.sqrt(var + bn.attrs.get("epsilon", 1e-5))
    return s, bias - mean * s


def fold_batchnorm(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    flat = not has_subgraphs(graph)
    for bn in list(graph.nodes):
        if bn.op_type != "BatchNormalization" or bn.graph is None:
            continue
        x = bn.inputs[0]
        prod = x.producer
        if prod is None or prod.graph is not graph or prod.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        if only_use(x) is not bn:
            ctx.reject("fold_batchnorm", [prod, bn], f"{prod.op_type} output has other consumers besides the BatchNorm")
            continue
        factors = _bn_factors(bn)
        if isinstance(factors, str):
            ctx.reject("fold_batchnorm", [prod, bn], factors)
            continue
        s, t = factors
        w = const(prod.inputs[1])
        if w is None or not w.dtype.is_floating_point:
            ctx.reject("fold_batchnorm", [prod, bn], f"{prod.op_type} weights are not float constants")
            continue
        b_in = prod.inputs[2] if len(prod.inputs) > 2 else None
        if b_in is not None and const(b_in) is None:
            ctx.reject("fold_batchnorm", [prod, bn], f"{prod.op_type} bias is not a constant")
            continue
        if prod.op_type == "ConvTranspose":
            group = prod.attrs.get("group", 1)
            if group != 1:
                ctx.reject("fold_batchnorm", [prod, bn], "ConvTranspose with groups")
                continue
            w_new = w.to(torch.float64) * s.reshape(1, -1, *([1] * (w.dim() - 2)))
        elif prod.op_type == "Conv":
            w_new = w.to(torch.float64) * s.reshape(-1, *([1] * (w.dim() - 1)))
        else:  # Gemm / MatMul: output features are the last dim of the result, BN channel axis is 1 of 2-D data
            rank = len(ctx.shape(x) or ())
            if rank != 2 or w.dim() != 2 or (prod.op_type == "Gemm" and (prod.attrs.get("transA", 0))):
                ctx.reject("fold_batchnorm", [prod, bn], "BatchNorm after a matrix product folds only for 2-D data")
                continue
            if prod.op_type == "Gemm":
                alpha = prod.attrs.get("alpha", 1.0)
                beta = prod.attrs.get("beta", 1.0)
                if alpha != 1.0 or beta != 1.0:
                    ctx.reject("fold_batchnorm", [prod, bn], "Gemm with alpha/beta != 1")
                    continue
            trans_b = prod.op_type == "Gemm" and prod.attrs.get("transB", 0)
            w_new = w.to(torch.float64) * (s.reshape(-1, 1) if trans_b else s.reshape(1, -1))
        b_old = const(b_in).to(torch.float64) if b_in is not None else torch.zeros_like(s)
        b_new = (b_old * s + t).to(w.dtype)
        prod.set_input(1, new_constant(graph, f"{prod.label}.weight_bn", w_new.to(w.dtype)))
        bias_v = new_constant(graph, f"{prod.label}.bias_bn", b_new)
        if len(prod.inputs) > 2:
            prod.set_input(2, bias_v)
        else:
            prod.inputs.append(None)
            prod.set_input(2, bias_v)
        if prod.op_type == "MatMul":
            # MatMul has no bias input: turn it into Gemm (2-D checked above).
            prod.op_type = "Gemm"
        merge_covers(prod, [prod, bn])
        y = bn.outputs[0]
        replace_uses(graph, y, prod.outputs[0], flat)
        bn.detach()
        graph.nodes.remove(bn)
        ctx.count("fold_batchnorm")
        changed = True
    return changed

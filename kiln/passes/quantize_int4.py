"""INT4 weight-only quantization (``BuilderConfig(int4_weights=True)``, CLI ``--int4``): every MatMul or Gemm
whose weight is a constant float matrix becomes onnxruntime's ``com.microsoft::MatMulNBits`` with 4-bit
weights in blocks of ``int4_block_size`` along K, one float scale per block, symmetric (code 8 is zero):

    MatMul(x, W[K, N])                    -> MatMulNBits(x, pack(W^T), scales)          {K, N, bits 4}
    Gemm(x, W, b) (alpha = beta = 1)      -> MatMulNBits(x, pack(W or W^T), scales, bias=b)

Activations stay in their float type; the weight is dequantized where the product is computed (on the GPU the
``triton_nbits`` tactic does it in registers, which is what makes a batch-1 GEMM read a quarter of the fp16
bytes). It runs before the recognizers, so the converted layers are not fused with their neighbours.

Each layer is checked before it is converted: on random inputs, its int4 output must stay within
``MAX_LAYER_ERROR`` (relative, Frobenius) of its float output, else it keeps its float weight and the report says
why (a weight with a few large outliers per block loses its small values). Then the model is held to
``accuracy_target`` as int8 builds are (default: cosine 0.99 and 99% of top-1 decisions kept, on the validation
data or a generated sample): while it misses, the layer with the largest own error keeps its float weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir.graph import Graph, Node, Value, new_constant
from ..ops.contrib_ms_quant import nbits_weight  # the op's own dequantization: the layer computes exactly this
from .context import PassContext
from .rewrite import const

MS = "com.microsoft"
RULE = "quantize_weights_int4"
MAX_LAYER_ERROR = 0.1  # relative output error of one layer on random inputs (4-bit blocks of 32: typically 3-8%)
MAX_KEPT = 24  # layers put back to float by the accuracy target at most, one measurement each


def quantize_blocks(w_nk: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 [N, blocks, block/2], scales float32 [N * blocks]) of a float [N, K] weight: per block of
    ``block`` values along K, scale = max|w| / 7 and code = round(w / scale) + 8 in 0..15, two codes a byte
    (the lower 4 bits first), K padded with zeros to whole blocks (MatMulNBits' layout)."""
    n, k = w_nk.shape
    blocks = (k + block - 1) // block
    w = torch.zeros(n, blocks * block, dtype=torch.float32)
    w[:, :k] = w_nk.to(torch.float32)
    w = w.reshape(n, blocks, block)
    scale = w.abs().amax(dim=-1, keepdim=True) / 7.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero block: any scale codes it exactly
    codes = (torch.round(w / scale) + 8).clamp(0, 15).to(torch.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed.contiguous(), scale.reshape(n * blocks).contiguous()


def quantize_weights_int4(graph: Graph, ctx: PassContext) -> bool:
    if not getattr(ctx.config, "int4_weights", False):
        return False
    block = int(getattr(ctx.config, "int4_block_size", 32))
    planned = _plan(graph, ctx, block)
    if not planned:
        return False
    kept, summary = _fit_target(graph, ctx, planned)
    for c in planned:
        if c.label in kept:
            ctx.reject(RULE, [c.node], f"kept in float: the model missed accuracy_target with this layer in int4 "
                                       f"(its output error {c.error:.3f} on random inputs)")
        else:
            ctx.count(RULE)
    _convert_all(graph, [c for c in planned if c.label not in kept])
    done = ctx.applied.get(RULE, 0)
    worst = max((c.error for c in planned if c.label not in kept), default=0.0)
    ctx.notes.append(f"int4 weights: {done} MatMul/Gemm layers as MatMulNBits (blocks of {block}, symmetric); worst "
                     f"layer output error {worst:.3g} (relative, random inputs); {summary}")
    return bool(done)


@dataclass
class _Candidate:
    node: Node
    label: str
    packed: torch.Tensor
    scales: torch.Tensor
    bias: Value | None
    n: int
    k: int
    block: int
    error: float  # the layer's own output error on random inputs


def _plan(graph: Graph, ctx: PassContext, block: int) -> list[_Candidate]:
    """Every MatMul/Gemm that can take int4 weights and passes the per-layer guard, with its packed weight."""
    out = []
    for node in list(graph.nodes):
        if node.graph is not graph or node.domain != "" or node.op_type not in ("MatMul", "Gemm"):
            continue
        w_nk, bias, why = _weight(node, ctx)
        if w_nk is None:
            if why:
                ctx.reject(RULE, [node], why)
            continue
        n, k = w_nk.shape
        packed, scales = quantize_blocks(w_nk, block)
        err = _output_error(nbits_weight(packed, scales, None, k, n, 4, block), w_nk.to(torch.float32))
        if err > MAX_LAYER_ERROR:
            ctx.reject(RULE, [node], f"int4 output error {err:.3f} on random inputs is over {MAX_LAYER_ERROR} "
                                     f"(relative): the layer keeps its float weight")
            continue
        out.append(_Candidate(node, node.label, packed, scales, bias, n, k, block, err))
    return out


def _convert_all(graph: Graph, candidates: list[_Candidate]) -> None:
    """Each candidate's MatMul/Gemm (found by label: ``graph`` may be a copy) replaced by MatMulNBits."""
    by_label = {n.label: n for n in graph.nodes if n.op_type in ("MatMul", "Gemm")}
    for c in candidates:
        _convert(graph, by_label[c.label], c)
    if candidates:
        graph.opsets.setdefault(MS, 1)


def _convert(graph: Graph, node: Node, c: _Candidate) -> None:
    x = node.inputs[0]
    dt = getattr(x.type, "dtype", None)
    bias = node.inputs[2] if c.bias is not None and len(node.inputs) > 2 else None
    inputs = [x, new_constant(graph, f"{c.label}/int4_weight", c.packed),
              new_constant(graph, f"{c.label}/int4_scales", c.scales.to(dt.torch if dt else torch.float32)),
              None, None, bias]
    while inputs and inputs[-1] is None:
        inputs.pop()
    at, out = graph.nodes.index(node), node.outputs[0]
    node.detach()  # first: the new layer takes over its output value (name and readers stay)
    graph.nodes.remove(node)
    node.graph = None
    new = Node("MatMulNBits", inputs, [out], {"K": c.k, "N": c.n, "bits": 4, "block_size": c.block},
               name=c.label, domain=MS)
    new.meta["covers"] = [c.label]
    new.graph = graph
    graph.nodes.insert(at, new)


def _fit_target(graph: Graph, ctx: PassContext, planned: list[_Candidate]) -> tuple[set[str], str]:
    """The layers to keep in float so the model meets ``accuracy_target`` (as int8 builds are held to it): the
    whole int4 model is measured against the float one on the validation data (else a generated sample);
    while outside the target, the layer with the largest own error goes back to float, one measurement each
    (at most MAX_KEPT). Returns (labels kept in float, what the report says)."""
    from ..quant.accuracy import compare, resolve_target
    from ..quant.calibrate import copy_graph, run_graph
    from .quantize_int8 import Data
    from .quantize_target import generated_sample
    target = resolve_target(ctx.config.accuracy_target, "int4")
    if target is None:
        return set(), "accuracy_target off: not checked"
    batches, data = Data(graph, ctx).validation(), "validation data"
    if not batches:
        batches, data = generated_sample(graph, ctx), "a generated sample (give validation_data for real data)"
    if not batches:
        return set(), "accuracy target not checked: no data and no static input shapes for a generated sample"
    try:
        ref = run_graph(graph, batches, ctx.config.device, ctx.registry)
    except Exception as e:  # noqa: BLE001 - a generated sample the model rejects (ids out of a table's range)
        return set(), f"accuracy target not checked: the model cannot run on {data} ({type(e).__name__})"

    def measure(kept: set[str]) -> dict:
        g = copy_graph(graph)
        _convert_all(g, [c for c in planned if c.label not in kept])
        return compare(ref, run_graph(g, batches, ctx.config.device, ctx.registry))

    kept: set[str] = set()
    m = measure(kept)
    for c in sorted(planned, key=lambda c: c.error, reverse=True)[:MAX_KEPT]:
        if target.met(m):
            break
        kept.add(c.label)
        m = measure(kept)
    goal = {k: v for k, v in vars(target).items() if v is not None}
    return kept, (f"accuracy on {data}: cosine {m['cosine']:.6f} vs float; target {goal} "
                  f"{'met' if target.met(m) else 'NOT met'}" + (f"; kept in float: {len(kept)} layers" if kept else ""))


def _weight(node: Node, ctx: PassContext) -> tuple[torch.Tensor | None, Value | None, str]:
    """The [N, K] float weight of a MatMul/Gemm that can become MatMulNBits, its bias value, or why not."""
    w = const(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return None, None, ""  # activations times activations (attention): not a weight
    if not w.is_floating_point() or w.dim() != 2:
        return None, None, "the weight is not a constant 2-D float matrix"
    x_dt = ctx.dtype(node.inputs[0])
    if x_dt is None or not x_dt.is_float:
        return None, None, "the input is not float"
    if node.op_type == "MatMul":
        return w.t(), None, ""
    a = node.attrs
    if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
        return None, None, "Gemm with transA, alpha or beta other than 1"
    w_nk = w if a.get("transB", 0) else w.t()
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None:
        b = const(bias)
        if b is None or b.dim() != 1 or b.shape[0] != w_nk.shape[0]:
            return None, None, "the Gemm bias is not a constant vector of N values"
    return w_nk, bias, ""


def _output_error(w_q: torch.Tensor, w: torch.Tensor) -> float:
    """||x W_q^T - x W^T|| / ||x W^T|| for 64 standard-normal rows x (a fixed seed: builds are reproducible)."""
    x = torch.randn(64, w.shape[1], generator=torch.Generator().manual_seed(0))
    ref = x @ w.t()
    return float((x @ w_q.t() - ref).norm() / ref.norm().clamp_min(1e-30))

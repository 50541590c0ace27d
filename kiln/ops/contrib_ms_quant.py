"""onnxruntime's com.microsoft quantized ops: QLinear elementwise/concat/pool, QGemm, the dynamic-quantization
matmuls, MatMulNBits (block-quantized 2/4/8-bit weights), QAttention, QEmbedLayerNormalization and
DynamicQuantizeLSTM.

Integer products are exact in float64 (as in ``quant_integer``); requantization rounds half to even and
saturates, as onnxruntime's kernels do.
"""
from __future__ import annotations

import torch

from .contrib_ms import embed_sum_norm
from .contrib_ms_attention import attention as float_attention
from .quant import dynamic_quantize_linear
from .registry import KernelContext, OpSet

MS = "com.microsoft"
ops = OpSet("contrib_ms_quant")


def dequantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int | None = None) -> torch.Tensor:
    """(x - zp) * scale in float32; a 1-D scale/zero point of more than one entry applies along ``axis``."""
    def shaped(p):
        if axis is None or p.dim() == 0 or p.numel() == 1:
            return p.reshape(())
        shape = [1] * x.dim()
        shape[axis] = -1
        return p.reshape(shape)
    centered = x.to(torch.float32) - (shaped(zp).to(torch.float32) if zp is not None else 0.0)
    return centered * shaped(scale).to(torch.float32)


def quantize(y: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """round(y / scale) + zp, saturated to ``dtype`` (round half to even)."""
    info = torch.iinfo(dtype)
    q = torch.round(y / scale.reshape(()).to(torch.float32))
    if zp is not None:
        q = q + zp.reshape(()).to(torch.float32)
    return torch.clamp(q, info.min, info.max).to(dtype)


def _out_dtype(zp: torch.Tensor | None, x: torch.Tensor) -> torch.dtype:
    return zp.dtype if zp is not None else x.dtype


# --- QLinear elementwise, concat, pool -----------------------------------------------------------------------
def _centered32(x: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
    return x.to(torch.float32) - (zp.reshape(()).to(torch.float32) if zp is not None else 0.0)


def _requantize(y: torch.Tensor, zp: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """round(y + zp) (half to even) saturated to ``dtype``; y is already in units of the output scale. The zero
    point joins before rounding, which decides the ties."""
    info = torch.iinfo(dtype)
    q = torch.round(y + (zp.reshape(()).to(torch.float32) if zp is not None else 0.0))
    return torch.clamp(q, info.min, info.max).to(dtype)


def _f32(*scales) -> list[torch.Tensor]:
    return [t.reshape(()).to(torch.float32) for t in scales]


@ops.op("QLinearAdd", domain=MS)
def qlinear_add(ctx: KernelContext, inputs: list, attrs: dict):
    """C = quantize(dequantize(A) + dequantize(B)), numpy broadcasting. Each operand is rescaled by its own
    float32 ratio to C's scale (a_scale / c_scale, b_scale / c_scale), which decides the ties onnxruntime rounds."""
    a, a_s, a_zp, b, b_s, b_zp, c_s, c_zp = (list(inputs) + [None] * 8)[:8]
    a_s, b_s, c_s = _f32(a_s, b_s, c_s)
    y = _centered32(a, a_zp) * (a_s / c_s) + _centered32(b, b_zp) * (b_s / c_s)
    return _requantize(y, c_zp, _out_dtype(c_zp, a))


@ops.op("QLinearMul", domain=MS)
def qlinear_mul(ctx: KernelContext, inputs: list, attrs: dict):
    """C = quantize(dequantize(A) * dequantize(B)), numpy broadcasting, with one float32 multiplier
    a_scale * b_scale / c_scale."""
    a, a_s, a_zp, b, b_s, b_zp, c_s, c_zp = (list(inputs) + [None] * 8)[:8]
    a_s, b_s, c_s = _f32(a_s, b_s, c_s)
    y = _centered32(a, a_zp) * _centered32(b, b_zp) * (a_s * b_s / c_s)
    return _requantize(y, c_zp, _out_dtype(c_zp, a))


@ops.op("QLinearSigmoid", domain=MS)
def qlinear_sigmoid(ctx: KernelContext, inputs: list, attrs: dict):
    """Y = quantize(sigmoid(dequantize(X)))."""
    x, x_s, x_zp, y_s, y_zp = (list(inputs) + [None] * 5)[:5]
    return quantize(torch.sigmoid(dequantize(x, x_s, x_zp)), y_s, y_zp, _out_dtype(y_zp, x))


@ops.op("QLinearConcat", domain=MS)
def qlinear_concat(ctx: KernelContext, inputs: list, attrs: dict):
    """Concatenation of (tensor, scale, zero point) triples, each requantized to (Y_scale, Y_zero_point)."""
    y_s, y_zp = inputs[0], inputs[1]
    parts = [dequantize(inputs[i], inputs[i + 1], inputs[i + 2]) for i in range(2, len(inputs), 3)]
    y = torch.cat(parts, dim=int(attrs["axis"]))
    return quantize(y, y_s, y_zp, _out_dtype(y_zp, inputs[2]))


@ops.op("QLinearGlobalAveragePool", domain=MS)
def qlinear_global_average_pool(ctx: KernelContext, inputs: list, attrs: dict):
    """Mean over the spatial axes (NCHW, or NHWC with channels_last=1), requantized."""
    x, x_s, x_zp, y_s, y_zp = (list(inputs) + [None] * 5)[:5]
    dims = list(range(1, x.dim() - 1)) if attrs.get("channels_last", 0) else list(range(2, x.dim()))
    count = 1
    for d in dims:
        count *= x.shape[d]
    # The integer sum, rescaled once by x_scale / (count * y_scale) in float32.
    total = _centered32(x, x_zp).to(torch.float64).sum(dim=dims, keepdim=True).to(torch.float32)
    x_s, y_s = _f32(x_s, y_s)
    return _requantize(total * (x_s / (count * y_s)), y_zp, _out_dtype(y_zp, x))


# --- matmuls -------------------------------------------------------------------------------------------------
def _centered64(x: torch.Tensor, zp: torch.Tensor | None, axis: int | None = None) -> torch.Tensor:
    x = x.to(torch.float64)
    if zp is None:
        return x
    zp = zp.to(torch.float64)
    if zp.numel() > 1 and axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        zp = zp.reshape(shape)
    return x - zp.reshape(zp.shape if zp.numel() > 1 else ())


def _col_scale(s: torch.Tensor) -> torch.Tensor:
    """A per-column (N) or scalar scale, shaped to broadcast over (..., M, N)."""
    return s.reshape(-1) if s.numel() > 1 else s.reshape(())


@ops.op("QGemm", domain=MS)
def qgemm(ctx: KernelContext, inputs: list, attrs: dict):
    """alpha * (A - a_zp) @ (B - b_zp) * a_scale * b_scale, plus int32 C in the accumulator; quantized to
    (y_scale, y_zero_point) when y_scale is given, else float."""
    a, a_s, a_zp, b, b_s, b_zp, c, y_s, y_zp = (list(inputs) + [None] * 9)[:9]
    if attrs.get("transA", 0):
        a = a.transpose(-1, -2)
    trans_b = bool(attrs.get("transB", 0))
    if trans_b:
        b = b.transpose(-1, -2)
    acc = torch.matmul(_centered64(a, a_zp), _centered64(b, b_zp, axis=1))
    if c is not None:
        acc = acc + c.to(torch.float64)
    scale = a_s.reshape(()).to(torch.float64) * _col_scale(b_s).to(torch.float64) * float(attrs.get("alpha", 1.0))
    y = (acc * scale).to(torch.float32)
    if y_s is None:
        return y
    return quantize(y, y_s, y_zp, _out_dtype(y_zp, a))


@ops.op("MatMulIntegerToFloat", domain=MS)
def matmul_integer_to_float(ctx: KernelContext, inputs: list, attrs: dict):
    """(A - a_zp) @ (B - b_zp) * a_scale * b_scale + bias, in float; b's scale and zero point may be per column."""
    a, b, a_s, b_s, a_zp, b_zp, bias = (list(inputs) + [None] * 7)[:7]
    return _int_matmul_to_float(a, b, a_s, b_s, a_zp, b_zp, bias)


def _int_matmul_to_float(a, b, a_s, b_s, a_zp, b_zp, bias):
    acc = torch.matmul(_centered64(a, a_zp), _centered64(b, b_zp, axis=-1))
    y = (acc * (a_s.reshape(()).to(torch.float64) * _col_scale(b_s).to(torch.float64))).to(a_s.dtype)
    return y if bias is None else y + bias


@ops.op("DynamicQuantizeMatMul", domain=MS)
def dynamic_quantize_matmul(ctx: KernelContext, inputs: list, attrs: dict):
    """A quantized on the fly to uint8 (DynamicQuantizeLinear), then MatMulIntegerToFloat with B."""
    a, b, b_s, b_zp, bias = (list(inputs) + [None] * 5)[:5]
    aq, a_s, a_zp = dynamic_quantize_linear(ctx, [a], {})
    return _int_matmul_to_float(aq, b, a_s, b_s, a_zp, b_zp, bias)


def _check_nbits(attrs: dict, given: list, used: list) -> str | None:
    bits = attrs.get("bits", 4)
    if bits not in (2, 4, 8):
        return f"attribute bits={bits} is not supported (2, 4 or 8)"
    if len(given) > 4 and given[4]:
        return "input g_idx (act-order) is not supported"
    return None


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """uint8 bytes holding 8/bits values each (lowest bits first) -> ``count`` values along the last axis."""
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.int32) * bits
    vals = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return vals.flatten(-2)[..., :count]


def nbits_weight(b: torch.Tensor, scales: torch.Tensor, zps: torch.Tensor | None, k: int, n: int, bits: int,
                 block: int) -> torch.Tensor:
    """The float (N, K) weight of MatMulNBits: (q - zero_point) * scale per block of ``block`` along K."""
    blocks = (k + block - 1) // block
    q = unpack_bits(b.reshape(n, blocks, -1), bits, block).to(torch.float32)  # (N, blocks, block)
    scales = scales.reshape(n, blocks, 1).to(torch.float32)
    if zps is None:
        zp = torch.full((), float(1 << (bits - 1)), device=b.device)
    elif zps.dtype == torch.uint8:
        zp = unpack_bits(zps.reshape(n, -1), bits, blocks).to(torch.float32).reshape(n, blocks, 1)
    else:
        zp = zps.reshape(n, blocks, 1).to(torch.float32)
    return ((q - zp) * scales).reshape(n, blocks * block)[:, :k]


@ops.op("MatMulNBits", domain=MS, check=_check_nbits)
def matmul_nbits(ctx: KernelContext, inputs: list, attrs: dict):
    """A @ dequantize(B)^T + bias, B holding N rows of K weights as ``bits``-bit blocks with a scale (and zero
    point) per block."""
    a, b, scales, zps, _g_idx, bias = (list(inputs) + [None] * 6)[:6]
    k, n = int(attrs["K"]), int(attrs["N"])
    w = nbits_weight(b, scales, zps, k, n, int(attrs.get("bits", 4)), int(attrs["block_size"]))
    y = torch.matmul(a, w.to(a.dtype).t())
    return y if bias is None else y + bias


# --- QAttention, QEmbedLayerNormalization, DynamicQuantizeLSTM -----------------------------------------------
def _check_qattention(attrs: dict, given: list, used: list) -> str | None:
    if attrs.get("do_rotary", 0) or attrs.get("past_present_share_buffer", 0):
        return "attributes do_rotary / past_present_share_buffer are not supported"
    return None


@ops.op("QAttention", domain=MS, check=_check_qattention)
def qattention(ctx: KernelContext, inputs: list, attrs: dict):
    """Attention whose input and weights are quantized: dequantized, then the float Attention."""
    x, w, bias, x_s, w_s, mask, x_zp, w_zp, past = (list(inputs) + [None] * 9)[:9]
    xf = dequantize(x, x_s, x_zp)
    wf = (_centered64(w, w_zp, axis=-1) * _col_scale(w_s).to(torch.float64)).to(torch.float32)
    return float_attention(ctx, [xf, wf, bias, mask, past], attrs)


@ops.op("QEmbedLayerNormalization", domain=MS)
def qembed_layer_normalization(ctx: KernelContext, inputs: list, attrs: dict):
    """EmbedLayerNormalization whose tables, gamma and beta are uint8 with scales and zero points."""
    ids, seg, word, pos, segt, gamma, beta, mask = (list(inputs) + [None] * 8)[:8]
    scales, zps = inputs[8:13], inputs[13:18]
    word, pos, segt, gamma, beta = (dequantize(t, s, z) if t is not None else None
                                    for t, s, z in zip((word, pos, segt, gamma, beta), scales, zps))
    y, mask_index, _ = embed_sum_norm(ids, seg, word, pos, segt, gamma, beta, mask, None,
                                      float(attrs.get("epsilon", 1e-12)))
    return y, mask_index


def _check_dq_lstm(attrs: dict, given: list, used: list) -> str | None:
    acts = [a.lower() for a in attrs.get("activations", [])]
    if acts and acts != ["sigmoid", "tanh", "tanh"] * (len(acts) // 3):
        return f"attribute activations={attrs['activations']} is not supported (only the default Sigmoid, Tanh, Tanh)"
    if attrs.get("clip") is not None:
        return "attribute clip is not supported"
    if attrs.get("input_forget", 0):
        return "attribute input_forget=1 is not supported"
    if len(given) > 4 and given[4]:
        return "input sequence_lens is not supported"
    return None


def _dequantized_weight(t: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
    """(dirs, in, 4H) int8 weights with a per-(direction, column) or single scale and zero point -> float32."""
    def shaped(p):
        return p.reshape(t.shape[0], 1, -1) if p.numel() > 1 else p.reshape(())
    centered = t.to(torch.float32) - (shaped(zp).to(torch.float32) if zp is not None else 0.0)
    return centered * shaped(scale).to(torch.float32)


def _dynamic_dequantized(x: torch.Tensor) -> torch.Tensor:
    """x through DynamicQuantizeLinear and back: the values the int8 GEMM sees."""
    q, scale, zp = dynamic_quantize_linear(None, [x], {})
    return (q.to(torch.float32) - zp.to(torch.float32)) * scale


@ops.op("DynamicQuantizeLSTM", domain=MS, check=_check_dq_lstm)
def dynamic_quantize_lstm(ctx: KernelContext, inputs: list, attrs: dict):
    """LSTM (gates i, o, f, c; optional peepholes) with int8 weights, as onnxruntime computes it: X is quantized
    to uint8 once for the whole sequence, the hidden state at every step, and each product is the int8 GEMM's
    (the quantized values times the weights' scale per output column)."""
    x, w, r, b, _lens, h0, c0, p, w_s, w_zp, r_s, r_zp = (list(inputs) + [None] * 12)[:12]
    hid = int(attrs["hidden_size"])
    direction = attrs.get("direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    wf, rf = _dequantized_weight(w, w_s, w_zp), _dequantized_weight(r, r_s, r_zp)
    seq, batch = x.shape[0], x.shape[1]
    xw = torch.matmul(_dynamic_dequantized(x), wf.unsqueeze(1))  # (dirs, seq, batch, 4H)
    ys, hs, cs = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        bias = (b[d, :4 * hid] + b[d, 4 * hid:]) if b is not None else 0.0
        h = h0[d] if h0 is not None else x.new_zeros(batch, hid)
        c = c0[d] if c0 is not None else x.new_zeros(batch, hid)
        pi, po, pf = (p[d, :hid], p[d, hid:2 * hid], p[d, 2 * hid:]) if p is not None else (0.0, 0.0, 0.0)
        out = [None] * seq
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            g = xw[d, t] + torch.matmul(_dynamic_dequantized(h), rf[d]) + bias
            gi, go, gf, gc = g.split(hid, dim=-1)
            i_t = torch.sigmoid(gi + pi * c)
            f_t = torch.sigmoid(gf + pf * c)
            c = f_t * c + i_t * torch.tanh(gc)
            h = torch.sigmoid(go + po * c) * torch.tanh(c)
            out[t] = h
        ys.append(torch.stack(out))
        hs.append(h)
        cs.append(c)
    return torch.stack(ys, dim=1), torch.stack(hs), torch.stack(cs)

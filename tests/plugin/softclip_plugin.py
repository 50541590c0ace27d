"""A user's plugin module, as the README's ten-line example writes it: my.domain::SoftClip with a PyTorch
reference and a Triton kernel. Imported by name (``--plugin softclip_plugin``) in the CLI tests."""
import torch
import triton
import triton.language as tl

from kiln.plugin import PluginLibrary

plugins = PluginLibrary()


@plugins.op("my.domain::SoftClip", elementwise=True, dtypes=("float32", "float16"))
def soft_clip(x, *, alpha: float = 1.0):
    return alpha * torch.tanh(x / alpha)


@triton.jit
def _soft_clip_kernel(x_ptr, y_ptr, n, alpha, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n).to(tl.float32)
    e = tl.exp(-2.0 * tl.abs(x / alpha))  # tanh(|t|) = (1 - e^-2|t|) / (1 + e^-2|t|): no overflow for large |t|
    t = (1.0 - e) / (1.0 + e)
    y = alpha * tl.where(x < 0, -t, t)
    y = tl.where(x != x, x, y)  # NaN in, NaN out, as the reference
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=offs < n)


@soft_clip.triton("block256")
def soft_clip_triton(x, *, alpha: float = 1.0):
    x = x.contiguous()
    y = torch.empty_like(x)
    _soft_clip_kernel[(triton.cdiv(x.numel(), 256),)](x, y, x.numel(), alpha, BLOCK=256)
    return y

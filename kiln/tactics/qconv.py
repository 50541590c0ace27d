"""The tactic of kiln::QConv through Kiln's Triton implicit-GEMM convolution (kiln/backends/triton/qconv.py):
the layer checked and its launch made once, a call the launch cannot take turned into a KernelError."""
from __future__ import annotations

import torch

from ..backends.triton import available
from ..backends.triton.launch import interpreting
from ..backends.triton.ops import Unsupported
from ..backends.triton.qconv import CONFIGS, INTERPRET_CONFIG, QConvLaunch
from ..errors import KernelError
from ..ops.fused_cpu import Tactic
from .space import NotApplicable


def qconv_tactic(node, params: dict, constants: dict, device: torch.device, *, on_cpu: bool = False):
    """The Triton implicit-GEMM tactic for a kiln::QConv (``params``: ``config``, optional ``quant_in``).
    Raises NotApplicable off CUDA (on the CPU only with ``on_cpu``, in Triton's interpreter: see
    ``kiln.backends.triton.available``) or for a layer it cannot take."""
    if (node.domain, node.op_type) != ("kiln", "QConv"):
        raise NotApplicable("the Triton implicit-GEMM convolution takes kiln::QConv")
    ok, why = available(device, on_cpu)
    if not ok:
        raise NotApplicable(why)
    config = params.get("config") or (INTERPRET_CONFIG if interpreting() else CONFIGS[0])
    try:
        launch = QConvLaunch(node, constants, device, tuple(config), params.get("quant_in", "kernel"))
    except Unsupported as e:
        raise NotApplicable(str(e)) from None
    return Tactic(launch.name, _checked(launch, node))


def _checked(launch: QConvLaunch, node):
    """The kernel, with a call it cannot take turned into a KernelError that says why (never a silent
    fallback: the tuner verified this tactic on the shapes it was chosen for)."""
    label = getattr(node, "label", node.op_type)

    def kernel(ctx, inputs, attrs):
        try:
            return launch(ctx, inputs, attrs)
        except Unsupported as e:
            raise KernelError(f"layer {label}: {launch.name} cannot run this call: {e}") from None
    return kernel

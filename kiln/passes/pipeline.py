"""The default optimization pipeline: a list of named passes, read top to bottom.

A pass is ``fn(graph, ctx) -> changed``. A ``FixedPoint`` group repeats its passes until none changes the
graph. Each pass is timed; a failure names the pass and the passes that ran before it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from ..errors import BuildError, KilnError
from ..ir.graph import Graph
from .branches import optimize_branches
from .common_subexpr import eliminate_common_subexpressions
from .context import PassContext
from .dead_code import eliminate_dead_code
from .fold_constants import fold_constants
from .fold_pad import fold_pad
from .fuse_batchnorm import fold_batchnorm
from .fuse_elementwise import fuse_elementwise
from .fuse_epilogue import fuse_epilogues
from .fuse_horizontal import fuse_horizontal
from .layout import choose_layout
from .lower_contrib import lower_contrib_ms
from .noops import merge_transposes, remove_noops
from .shape_reads import read_dims_from_inputs
from .symbolic_shapes import simplify_symbolic_shapes
from .precision import lower_precision
from .quantize_int8 import quantize_int8
from .quantize_norms import quantize_norm_outputs
from .quantize_outputs import quantize_layer_outputs, quantize_pool_outputs
from .quantize_qdq import import_qdq
from .quantize_target import fit_precision_target
from .quantize_int4 import quantize_weights_int4
from .recognize import (recognize_gelu, recognize_hardswish, recognize_layer_norm, recognize_mish,
                        recognize_rms_norm, recognize_silu)
from .recognize_attention import fold_attention_heads, recognize_attention

log = logging.getLogger("kiln.build")

PassFn = Callable[[Graph, PassContext], bool]


@dataclass(frozen=True)
class Pass:
    name: str
    fn: PassFn
    min_level: int = 1  # runs when BuilderConfig.optimization_level >= min_level


@dataclass(frozen=True)
class FixedPoint:
    name: str
    passes: tuple[Pass, ...]
    max_rounds: int = 8
    min_level: int = 1


SIMPLIFY = FixedPoint("simplify", (
    # Before folding: a static batch's Expand must not fold into a large constant before its broadcast is dropped.
    Pass("simplify_symbolic_shapes", simplify_symbolic_shapes),
    Pass("fold_constants", fold_constants),
    Pass("remove_noops", remove_noops),
    Pass("merge_transposes", merge_transposes),
    Pass("read_dims_from_inputs", read_dims_from_inputs),
    Pass("eliminate_common_subexpressions", eliminate_common_subexpressions),
    Pass("eliminate_dead_code", eliminate_dead_code),
))

# Exporters' decomposed forms back into single layers.
RECOGNIZE: tuple[Pass, ...] = (
    Pass("fold_pad", fold_pad),  # a zero Pad into the Conv/AveragePool after it
    Pass("recognize_gelu", recognize_gelu),
    Pass("recognize_silu", recognize_silu),
    Pass("recognize_mish", recognize_mish),
    Pass("recognize_hardswish", recognize_hardswish),
    Pass("recognize_layer_norm", recognize_layer_norm),
    Pass("recognize_rms_norm", recognize_rms_norm),
)

# If branches get the local passes (kiln/passes/branches.py); the branch pipeline ends with it too, for nested Ifs.
OPTIMIZE_BRANCHES = Pass("optimize_branches", lambda graph, ctx: optimize_branches(graph, ctx, run_branch_pipeline))

DEFAULT_PIPELINE: tuple[Pass | FixedPoint, ...] = (
    Pass("eliminate_dead_code", eliminate_dead_code, min_level=0),
    Pass("import_qdq", import_qdq),  # Q/DQ pairs -> kiln::FakeQuant, DQ(weights) -> float (+ int8 hint)
    # onnxruntime's fused com.microsoft ops back into the standard layers the fusions below rebuild.
    Pass("lower_contrib_ms", lower_contrib_ms),
    Pass("quantize_weights_int4", quantize_weights_int4, min_level=0),  # BuilderConfig.int4_weights
    SIMPLIFY,
    *RECOGNIZE,
    Pass("recognize_attention", recognize_attention),
    Pass("fold_attention_heads", fold_attention_heads),
    SIMPLIFY,
    # Vertical fusion: BatchNorm into weights, then bias/activation/residual into the producing layer.
    Pass("fold_batchnorm", fold_batchnorm),
    Pass("fuse_epilogues", fuse_epilogues),
    # Horizontal fusion: siblings reading the same input become one wider layer.
    Pass("fuse_horizontal", fuse_horizontal, min_level=2),
    Pass("fuse_elementwise", fuse_elementwise),
    Pass("eliminate_dead_code", eliminate_dead_code),
    OPTIMIZE_BRANCHES,
    # Reduced precision after fusion, so folded weights are computed in float64/32 and stored once in T.
    Pass("quantize_int8", quantize_int8, min_level=0),
    Pass("fit_precision_target", fit_precision_target, min_level=0),  # fp16/bf16 + accuracy_target
    Pass("lower_precision", lower_precision, min_level=0),
    # Quantize where the data is made: LayerNorms and fp8 layers write the 8-bit copy their quantized readers take.
    Pass("quantize_norm_outputs", quantize_norm_outputs),
    Pass("quantize_layer_outputs", quantize_layer_outputs),
    Pass("quantize_pool_outputs", quantize_pool_outputs),
    Pass("choose_layout", choose_layout),
)


# What an If branch gets (kiln/passes/branches.py): the passes that look at one graph's own nodes.
BRANCH_PIPELINE: tuple[Pass | FixedPoint, ...] = (
    FixedPoint("simplify", tuple(p for p in SIMPLIFY.passes if p.name != "read_dims_from_inputs")),
    *RECOGNIZE,
    Pass("fold_batchnorm", fold_batchnorm),
    Pass("fuse_epilogues", fuse_epilogues),
    Pass("fuse_elementwise", fuse_elementwise),
    Pass("eliminate_dead_code", eliminate_dead_code),
    OPTIMIZE_BRANCHES,
)


def run_branch_pipeline(graph: Graph, ctx: PassContext) -> list[tuple[str, float]]:
    return run_pipeline(graph, ctx, BRANCH_PIPELINE)


def run_pipeline(graph: Graph, ctx: PassContext, pipeline=None,
                 progress: Callable | None = None) -> list[tuple[str, float]]:
    """Run ``pipeline`` (default: DEFAULT_PIPELINE) on ``graph`` in place; return (pass name, seconds) for
    each pass run.

    ``progress(stage, done, total, message)``, if given, is called as each top-level step finishes
    (stage "passes"; a FixedPoint group counts as one step, since its rounds are not known ahead).
    """
    pipeline = DEFAULT_PIPELINE if pipeline is None else pipeline
    timings: list[tuple[str, float]] = []
    done: list[str] = []
    level = ctx.config.optimization_level

    def run_one(p: Pass) -> bool:
        t0 = time.perf_counter()
        try:
            changed = p.fn(graph, ctx)
        except KilnError as e:
            raise BuildError(f"pass {p.name!r} failed: {e} (passes before it: {', '.join(done) or 'none'})") from e
        except Exception as e:  # noqa: BLE001 - a pass bug must name the pass
            raise BuildError(f"pass {p.name!r} failed: {type(e).__name__}: {e} "
                             f"(passes before it: {', '.join(done) or 'none'})") from e
        timings.append((p.name, time.perf_counter() - t0))
        done.append(p.name)
        if changed:
            ctx.invalidate()
            if ctx.config.verbosity >= 2:
                try:
                    graph.verify()
                except KilnError as e:
                    raise BuildError(f"pass {p.name!r} left an invalid graph: {e}") from e
                log.debug("after %s:\n%s", p.name, graph)
        return bool(changed)

    steps = [s for s in pipeline if s.min_level <= level]
    if progress is not None:
        progress("passes", 0, len(steps), "")
    for i, step in enumerate(steps):
        if isinstance(step, FixedPoint):
            for _ in range(step.max_rounds):
                if not any([run_one(p) for p in step.passes if p.min_level <= level]):
                    break
        else:
            run_one(step)
        if progress is not None:
            progress("passes", i + 1, len(steps), step.name)
    return timings

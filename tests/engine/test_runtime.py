"""Execution contexts: I/O kinds, output buffers, profiles, threads."""
import threading

import numpy as np
import pytest
import torch

import kiln


def reference(x, model):
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(model).run(None, {"x": x})


@pytest.fixture(scope="module")
def engine(small_model):
    profile = kiln.Profile.of(x=((1, 4, 8, 8), (4, 4, 8, 8), (8, 4, 8, 8)))
    return kiln.build(small_model, kiln.BuilderConfig(profiles=(profile,)))


def test_numpy_in_numpy_out_and_matches_reference(engine, small_model):
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    out = engine.create_execution_context().infer({"x": x})
    y, z = reference(x, small_model)
    assert isinstance(out["y"], np.ndarray)
    np.testing.assert_allclose(out["y"], y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["z"], z, rtol=1e-5, atol=1e-5)


def test_torch_in_torch_out_and_output_buffers(engine):
    x = torch.randn(3, 4, 8, 8)
    ctx = engine.create_execution_context()
    out = ctx.infer([x])
    assert isinstance(out["y"], torch.Tensor)
    buf = torch.empty(3, 8, 8, 8)
    out2 = ctx.infer({"x": x}, outputs={"y": buf})
    assert out2["y"] is buf
    torch.testing.assert_close(buf, out["y"])


def test_async_handle(engine):
    x = torch.randn(1, 4, 8, 8)
    handle = engine.create_execution_context().infer_async({"x": x})
    assert handle.done()
    assert handle.wait()["y"].shape == (1, 8, 8, 8)


def test_shape_outside_profile_names_input_and_bounds(engine):
    with pytest.raises(kiln.ShapeError, match=r"'x'.*\[9, 4, 8, 8\].*min \[1, 4, 8, 8\].*max \[8, 4, 8, 8\]"):
        engine.create_execution_context().infer({"x": np.zeros((9, 4, 8, 8), np.float32)})


def test_input_errors(engine):
    ctx = engine.create_execution_context()
    with pytest.raises(kiln.InputError, match="unknown input name"):
        ctx.infer({"nope": np.zeros((1, 4, 8, 8), np.float32)})
    with pytest.raises(kiln.InputError, match="missing input 'x'"):
        ctx.infer({})
    with pytest.raises(kiln.InputError, match="dtype float"):
        ctx.infer({"x": np.zeros((1, 4, 8, 8), np.float64)})
    with pytest.raises(kiln.ShapeError, match="dimension 1"):
        ctx.infer({"x": np.zeros((1, 5, 8, 8), np.float32)})


def test_several_profiles_are_chosen_by_shape(small_model):
    p1 = kiln.Profile.of(x=((1, 4, 8, 8), (1, 4, 8, 8), (2, 4, 8, 8)))
    p2 = kiln.Profile.of(x=((3, 4, 8, 8), (8, 4, 8, 8), (16, 4, 8, 8)))
    engine = kiln.build(small_model, kiln.BuilderConfig(profiles=(p1, p2)))
    ctx = engine.create_execution_context()
    ctx.infer({"x": np.zeros((12, 4, 8, 8), np.float32)})
    assert ctx.profile_index == 1
    ctx.infer({"x": np.zeros((2, 4, 8, 8), np.float32)})
    assert ctx.profile_index == 0


def test_bad_profiles_rejected_at_build(small_model):
    with pytest.raises(kiln.ShapeError, match="'nope'"):
        kiln.build(small_model, kiln.BuilderConfig(profiles=(kiln.Profile.fixed({"nope": (1, 4, 8, 8)}),)))
    with pytest.raises(kiln.ShapeError, match="min <= opt <= max"):
        kiln.BuilderConfig(profiles=(kiln.Profile.of(x=((4, 4, 8, 8), (1, 4, 8, 8), (8, 4, 8, 8))),))


def test_contexts_in_threads(engine, small_model):
    errors = []

    def work(seed):
        try:
            run(seed)
        except Exception as e:  # noqa: BLE001 - a thread's exception must fail the test
            errors.append((seed, repr(e)))

    def run(seed):
        ctx = engine.create_execution_context()
        rng = np.random.default_rng(seed)
        for _ in range(5):
            x = rng.standard_normal((seed % 4 + 1, 4, 8, 8)).astype(np.float32)
            y, _ = reference(x, small_model)
            got = ctx.infer({"x": x})["y"]
            if not np.allclose(got, y, rtol=1e-4, atol=1e-4):
                errors.append(seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_memory_figures_in_report(engine):
    m = engine.report.memory
    assert m["lower_bound_bytes"] <= m["arena_bytes"] <= m["naive_bytes"]
    assert set(m) == {"arena_bytes", "naive_bytes", "lower_bound_bytes"}


def test_workspace_limit_enforced(small_model):
    profile = kiln.Profile.of(x=((1, 4, 8, 8), (4, 4, 8, 8), (64, 4, 8, 8)))
    with pytest.raises(kiln.BuildError, match="workspace"):
        kiln.build(small_model, kiln.BuilderConfig(profiles=(profile,), workspace_bytes=1024, optimization_level=0))


def test_build_from_graph_leaves_it_unchanged(small_model):
    g = kiln.parse(small_model)
    before = str(g)
    kiln.build(g)
    assert str(g) == before

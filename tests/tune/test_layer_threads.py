"""Per-layer thread counts on the CPU (kiln/tune/layer_threads.py, Program's with_threads): the outputs never
change, the caller's thread setting is always restored, and the stored choice is validated like every field."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.engine import format as fmt
from kiln.engine.program import with_threads

sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))
import engine_seeds  # noqa: E402


def _engine(**options):
    return kiln.build(engine_seeds.SEEDS["conv"](), **{**engine_seeds.build_options("conv"), **options})


def _feed(engine, seed=0):
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d if isinstance(d, int) else 2 for d in i.shape]).astype(np.float32)
            for i in engine.inputs}


def test_with_threads_restores_the_setting_also_on_error():
    before = torch.get_num_threads()
    seen = []

    def kernel(ctx, inputs, attrs, out=None):
        seen.append(torch.get_num_threads())
        if inputs == "fail":
            raise RuntimeError("boom")
        return out
    kernel.accepts_out = ("cpu",)
    wrapped = with_threads(kernel, 1)
    assert wrapped.accepts_out == ("cpu",)
    assert wrapped(None, [], {}, out="buffer") == "buffer"
    with pytest.raises(RuntimeError):
        wrapped(None, "fail", {})
    assert seen == [1, 1] and torch.get_num_threads() == before


def test_layers_marked_for_one_thread_give_the_same_outputs():
    plain = _engine(layer_threads=False)
    data = plain.serialize()
    h, p, w = fmt.unpack(data)
    for n in p["nodes"]:
        n.setdefault("meta", {})["threads"] = 1  # every layer on one thread
    marked = kiln.Engine.deserialize(fmt.pack(h, p, w))
    assert all(s.threads == 1 for s in marked.program.steps)
    before = torch.get_num_threads()
    feed = _feed(plain)
    want = plain.create_execution_context().infer(feed)
    got = marked.create_execution_context().infer(feed)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("value", [2, 0, "1", 1.5, [1]])
def test_a_stored_thread_count_other_than_one_is_refused(value):
    h, p, w = fmt.unpack(_engine(layer_threads=False).serialize())
    p["nodes"][0].setdefault("meta", {})["threads"] = value
    with pytest.raises(kiln.EngineFormatError, match="threads"):
        kiln.Engine.deserialize(fmt.pack(h, p, w))


def test_the_build_marks_only_what_it_measured_and_says_so():
    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread: nothing to choose")
    engine = _engine(layer_threads=True)
    marked = [s.node.label for s in engine.program.steps if s.threads == 1]
    notes = [n for n in engine.report.notes if "on one thread" in n]
    assert bool(notes) == bool(marked)
    if notes and notes[0].startswith("every layer runs on one thread"):
        assert len(marked) == len(engine.program.steps)
    for label in marked if notes and not notes[0].startswith("every layer") else ():
        assert label in notes[0]
    reference = _engine(layer_threads=False)
    feed = _feed(engine, 1)
    want = reference.create_execution_context().infer(feed)
    got = engine.create_execution_context().infer(feed)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_a_layer_whose_own_kernel_is_faster_on_one_thread_runs_it_and_the_file_keeps_that(monkeypatch):
    """The tactic was tuned on all threads; on one thread the op's own kernel may be faster. With the timings
    fixed (the layer faster on one thread, its own kernel faster than its tactic there, the whole model faster),
    the layer's choice becomes TORCH in the binding, the report and the saved file, and outputs do not change."""
    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread: nothing to choose")
    from kiln.tune import layer_threads
    many = torch.get_num_threads()

    def fake_layer_ms(program, feed, thread_counts):
        steps = len(program.steps)
        if thread_counts == (1,):  # the program whose chosen layers run their own kernel
            return {1: [[0.1]] * steps}
        return {1: [[0.5]] * steps, many: [[1.0]] * steps}
    whole = iter([1.0, 0.5, 0.9])  # plain, the marked layers on one thread, every layer on one thread
    monkeypatch.setattr(layer_threads, "_layer_ms", fake_layer_ms)
    monkeypatch.setattr(layer_threads, "_whole_ms", lambda program, feed: next(whole))
    # A budget that runs out at once keeps every layer's default tactic (oneDNN on the CPU): which tactics the
    # tuner would pick depends on the machine's load, and on a busy CI runner it once picked none.
    engine = _engine(layer_threads=True, tuning_budget_s=1e-9)
    reference = _engine(layer_threads=False, tuning_budget_s=1e-9)
    tuned = {l.name for l in reference.report.layers if l.tactic and l.tactic != "torch"}
    assert tuned, "the seed model has no layer with a tactic to switch"
    switched = {l.name for l in engine.report.layers if l.name in tuned and l.tactic == "torch"}
    assert switched == tuned
    assert any("own kernel instead of the tactic" in n for n in engine.report.notes), engine.report.notes
    assert all(s.tactic == "" and s.threads == 1 for s in engine.program.steps if s.node.label in switched)
    loaded = kiln.Engine.deserialize(engine.serialize())
    assert all(s.tactic == "" for s in loaded.program.steps if s.node.label in switched)
    feed = _feed(engine, 2)
    want = reference.create_execution_context().infer(feed)
    got = loaded.create_execution_context().infer(feed)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_every_layer_runs_on_one_thread_when_the_whole_model_is_fastest_so(monkeypatch):
    """No layer is clearly faster alone, but the whole model on one thread beats both the plain run and the
    marks (the pool's wake-ups between layers): every layer gets one thread, the report says so, outputs stay."""
    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread: nothing to choose")
    from kiln.tune import layer_threads
    many = torch.get_num_threads()
    monkeypatch.setattr(layer_threads, "_layer_ms",
                        lambda program, feed, counts: {n: [[1.0]] * len(program.steps) for n in counts})
    whole = iter([1.0, 0.5])  # plain, every layer on one thread (no marks: no layer is faster alone)
    monkeypatch.setattr(layer_threads, "_whole_ms", lambda program, feed: next(whole))
    engine = _engine(layer_threads=True)
    assert all(s.threads == 1 for s in engine.program.steps)
    assert any(n.startswith("every layer runs on one thread") for n in engine.report.notes), engine.report.notes
    assert many > 1 and torch.get_num_threads() == many
    reference = _engine(layer_threads=False)
    feed = _feed(engine, 3)
    want = reference.create_execution_context().infer(feed)
    got = kiln.Engine.deserialize(engine.serialize()).create_execution_context().infer(feed)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_a_model_too_slow_to_time_skips_the_choice_and_says_so(monkeypatch):
    from kiln.tune import layer_threads
    if torch.get_num_threads() <= 1:
        pytest.skip("the choice is only made with several threads")
    monkeypatch.setattr(layer_threads, "BUDGET_S", 0.0)  # any model is "too slow" now
    e = _engine()
    assert any("per-layer thread choice skipped: timing it would take" in n and "budget 0 s" in n
               for n in e.report.notes), \
        e.report.notes
    assert all(s.threads is None for s in e.program.steps)

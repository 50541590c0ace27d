"""The arena on the GPU (run on a CUDA machine: `python -m pytest tests/gpu -q`): placed runs (with and
without CUDA graphs) match unplaced ones, layers really compute into their arena buffers (the allocator's
peak during a placed run stays below an unplaced run's), and Concat inputs land in their slices."""
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx.reference import ReferenceEvaluator

import kiln

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny_resnet.onnx"
PROFILE = kiln.Profile.of(image=((1, 3, 64, 64), (8, 3, 64, 64), (32, 3, 64, 64)))


@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("graphs", [True, False])
def test_cnn_placed_matches_unplaced(fp16, graphs):
    engine = kiln.build(EXAMPLE, kiln.BuilderConfig(device="cuda", profiles=(PROFILE,), fp16=fp16,
                                                    cuda_graphs=graphs))
    assert engine.arena_bytes and engine.arena_bytes > 0
    placed, plain = engine.create_execution_context(), engine.create_execution_context(arena=False)
    for batch in (32, 3, 32):
        x = torch.randn(batch, 3, 64, 64, device="cuda")
        want = plain.infer({"image": x})["logits"].float()
        for _ in range(3):
            got = placed.infer({"image": x})["logits"].float()
            torch.testing.assert_close(got, want, rtol=2e-2 if fp16 else 1e-3, atol=2e-2 if fp16 else 1e-3)
    stats = placed.memory_stats()
    print(engine.tactics, stats)
    assert stats["placed_tensors"] > 0 and not stats["declined"], stats
    assert not placed.notes, placed.notes


def test_placed_layers_allocate_nothing():
    engine = kiln.build(EXAMPLE, kiln.BuilderConfig(device="cuda", profiles=(PROFILE,), cuda_graphs=False))
    x = torch.randn(32, 3, 64, 64, device="cuda")
    counts = {}
    for arena in (True, False):
        ctx = engine.create_execution_context(arena=arena)
        ctx.infer({"image": x})  # records (placed) / warms up (unplaced)
        torch.cuda.synchronize()
        before = torch.cuda.memory_stats()["allocation.all.allocated"]
        ctx.infer({"image": x})
        torch.cuda.synchronize()
        counts[arena] = torch.cuda.memory_stats()["allocation.all.allocated"] - before
        if arena:
            stats = ctx.memory_stats()
    print(counts, stats)
    # placed layers allocate no output (a library conv + Triton epilogue still allocates the conv's own result)
    assert counts[False] > counts[True] and stats["placed_tensors"] > 0, (counts, stats)


def test_concat_inputs_land_in_their_slices_on_cuda():
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
    from test_arena import _feeds, concat_mlp
    model = concat_mlp()
    engine = kiln.build(model, kiln.BuilderConfig(device="cuda"))
    ctx = engine.create_execution_context()
    ref = ReferenceEvaluator(model)
    for batch in (4, 4, 9, 9):
        feeds = _feeds(batch)
        np.testing.assert_allclose(ctx.infer(feeds)["y"], ref.run(None, feeds)[0], rtol=1e-3, atol=1e-3)
    stats = ctx.memory_stats()
    print(engine.report.fusions, engine.tactics, stats, [r for r in engine.report.rejections
                                                         if r["rule"] == "concat_in_place"])
    assert engine.report.fusions.get("concat_in_place", 0) >= 1 and stats["concat_in_place"] == 1

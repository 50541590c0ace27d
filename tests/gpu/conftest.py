"""Fixtures of the GPU tests."""
import pytest
import torch


@pytest.fixture
def graph_replay():
    """``run(call, x) -> (eager, replayed, fresh)``: ``call()`` run eagerly; captured in a CUDA graph (after a
    warm-up on a side stream) and replayed once new random values are written into its input ``x``; run
    eagerly again on those values. A kernel that is graph safe gives replayed == fresh != eager."""
    def run(call, x):
        eager = call()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            call()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            replayed = call()
        x.copy_(torch.randn_like(x))
        g.replay()
        fresh = call()
        torch.cuda.synchronize()
        return eager, replayed, fresh
    return run

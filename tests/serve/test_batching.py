"""The Batcher alone, with a stand-in execution context that records each batch and can be held: merging up
to max_batch_size, preferred sizes, shape keys, splitting back, the bounded queue, timeouts, draining."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from kiln.errors import KernelError, RequestTimeoutError, ServerBusyError
from kiln.serve.batching import Batcher, BatchPolicy, wait
from kiln.serve.metrics import Metrics

RESULT_TIMEOUT_S = 60  # only keeps a broken test from hanging; nothing here asserts on time


class HeldContext:
    """infer(x) -> {"y": 2x, "row_sum": x.sum(1)}; each call waits until ``release`` is set."""

    def __init__(self, fail: bool = False):
        self.calls: list[int] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.fail = fail

    def infer(self, feed):
        self.entered.set()
        assert self.release.wait(RESULT_TIMEOUT_S)
        self.calls.append(feed["x"].shape[0])
        if self.fail:
            raise RuntimeError("device lost")
        return {"y": feed["x"] * 2, "row_sum": feed["x"].sum(axis=1)}


def make(policy: BatchPolicy, ctx=None, fits=lambda shapes: True):
    ctx = ctx or HeldContext()
    return Batcher("m:1", [ctx], policy, fits, Metrics().for_model("m", "1")), ctx


def submit(batcher, rows: int, width: int = 3, value: float | None = None):
    x = np.full((rows, width), float(value if value is not None else rows), np.float32) + \
        np.arange(rows, dtype=np.float32)[:, None]
    return x, batcher.submit({"x": x}, rows, ("x", width))


def hold_first(batcher, ctx):
    """Send one request and wait until the worker runs it (and blocks): later requests pile up."""
    x, f = submit(batcher, 1, value=100)
    assert ctx.entered.wait(RESULT_TIMEOUT_S)
    return x, f


def test_queued_requests_merge_up_to_max_and_split_back():
    batcher, ctx = make(BatchPolicy(enabled=True, max_batch_size=8, max_queue_delay_s=0.0))
    first = hold_first(batcher, ctx)
    sent = [submit(batcher, rows) for rows in (1, 2, 3, 2, 1)]  # 9 rows queued: 8 fit one batch
    ctx.release.set()
    for x, f in [first, *sent]:
        out = f.result(RESULT_TIMEOUT_S)
        np.testing.assert_array_equal(out["y"], 2 * x)
        np.testing.assert_array_equal(out["row_sum"], x.sum(axis=1))
    batcher.close()
    assert ctx.calls == [1, 8, 1]


def test_shapes_that_differ_are_not_merged():
    batcher, ctx = make(BatchPolicy(enabled=True, max_batch_size=8))
    hold_first(batcher, ctx)
    futures = [submit(batcher, 1, width=3)[1], submit(batcher, 1, width=5)[1], submit(batcher, 1, width=3)[1]]
    ctx.release.set()
    for f in futures:
        f.result(RESULT_TIMEOUT_S)
    batcher.close()
    assert ctx.calls == [1, 2, 1]  # the two width-3 requests together, the width-5 one alone


def test_profile_bounds_limit_a_merge():
    batcher, ctx = make(BatchPolicy(enabled=True, max_batch_size=8), fits=lambda shapes: shapes["x"][0] <= 3)
    hold_first(batcher, ctx)
    futures = [submit(batcher, 1)[1] for _ in range(5)]
    ctx.release.set()
    for f in futures:
        f.result(RESULT_TIMEOUT_S)
    batcher.close()
    assert ctx.calls == [1, 3, 2]


def test_preferred_batch_size_dispatches_without_waiting_out_the_delay():
    """With a delay of an hour, only reaching a preferred size (or max) can send the batch."""
    ctx = HeldContext()
    ctx.release.set()
    batcher, _ = make(BatchPolicy(enabled=True, max_batch_size=8, max_queue_delay_s=3600,
                                  preferred_batch_sizes=(2,)), ctx)
    futures = [submit(batcher, 1)[1] for _ in range(2)]
    for f in futures:
        f.result(RESULT_TIMEOUT_S)
    full = [submit(batcher, 4)[1] for _ in range(2)]  # 8 rows = max
    for f in full:
        f.result(RESULT_TIMEOUT_S)
    batcher.close()
    assert ctx.calls == [2, 8]


def test_batching_off_runs_each_request_alone():
    batcher, ctx = make(BatchPolicy(enabled=False, max_batch_size=8))
    hold_first(batcher, ctx)
    futures = [submit(batcher, 2)[1] for _ in range(3)]
    ctx.release.set()
    for f in futures:
        f.result(RESULT_TIMEOUT_S)
    batcher.close()
    assert ctx.calls == [1, 2, 2, 2]


def test_full_queue_raises_at_once():
    batcher, ctx = make(BatchPolicy(enabled=False, max_queue_size=2))
    hold_first(batcher, ctx)
    queued = [submit(batcher, 1)[1] for _ in range(2)]
    with pytest.raises(ServerBusyError, match="queue is full"):
        submit(batcher, 1)
    ctx.release.set()
    for f in queued:
        f.result(RESULT_TIMEOUT_S)
    batcher.close()


def test_timed_out_request_is_withdrawn_and_never_run():
    batcher, ctx = make(BatchPolicy(enabled=False))
    hold_first(batcher, ctx)
    _, late = submit(batcher, 5)
    with pytest.raises(RequestTimeoutError, match="waited"):
        wait(late, 0.01, "m:1")
    ctx.release.set()
    batcher.close()
    assert ctx.calls == [1]  # the withdrawn 5-row request never reached the engine


def test_close_answers_what_is_queued_then_refuses():
    batcher, ctx = make(BatchPolicy(enabled=True, max_batch_size=4))
    hold_first(batcher, ctx)
    queued = [submit(batcher, 1) for _ in range(6)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    while not batcher.closed:  # until close() has begun
        time.sleep(0.001)
    with pytest.raises(ServerBusyError, match="shutting down"):
        submit(batcher, 1)
    ctx.release.set()
    closer.join(RESULT_TIMEOUT_S)
    for x, f in queued:
        np.testing.assert_array_equal(f.result(0)["y"], 2 * x)


def test_engine_failure_fails_the_batch_with_a_kernel_error():
    ctx = HeldContext(fail=True)
    ctx.release.set()
    batcher, _ = make(BatchPolicy(enabled=True, max_batch_size=4), ctx)
    _, f = submit(batcher, 2)
    with pytest.raises(KernelError, match="device lost"):
        f.result(RESULT_TIMEOUT_S)
    batcher.close()


def test_padded_batches_run_at_bucket_sizes_and_answer_only_the_real_rows():
    """GPU engines pad each call to a bucket size (a CUDA graph per size, not per row count): 3 merged rows run
    as 4 (the last row repeated), 5 as 6 (a preferred size), and each request gets its own rows back."""
    policy = BatchPolicy(enabled=True, max_batch_size=8, preferred_batch_sizes=(6,), pad_to_buckets=True)
    assert policy.bucket_sizes() == (1, 2, 4, 6, 8)
    batcher, ctx = make(policy)
    first = hold_first(batcher, ctx)
    sent = [submit(batcher, rows) for rows in (2, 1)]
    ctx.release.set()
    for x, f in [first, *sent]:
        out = f.result(RESULT_TIMEOUT_S)
        np.testing.assert_array_equal(out["y"], x * 2)
        np.testing.assert_array_equal(out["row_sum"], x.sum(axis=1))
    alone = submit(batcher, 5)
    out = alone[1].result(RESULT_TIMEOUT_S)
    np.testing.assert_array_equal(out["y"], alone[0] * 2)
    assert ctx.calls == [1, 4, 6]
    batcher.close()


def test_no_padding_unless_asked():
    policy = BatchPolicy(enabled=True, max_batch_size=8)
    assert policy.padded_rows(3) == 3


class TableContext:
    """infer(x) -> {"y": 2x, "table": a fixed [5] output that does not follow the batch}."""

    def __init__(self):
        self.calls: list[int] = []

    def infer(self, feed):
        self.calls.append(feed["x"].shape[0])
        return {"y": feed["x"] * 2, "table": np.arange(5, dtype=np.float32)}


def test_an_output_that_does_not_follow_the_batch_is_run_unpadded():
    """A lone 3-row request padded to 4 gives a [5] table, which is not the batch: the call is run again unpadded.
    (An output of the padded length that is not the batch is not told apart here; kiln serve batches, and so
    pads, only engines whose every output has a dynamic dim 0, kiln/serve/model.py.)"""
    ctx = TableContext()
    batcher, _ = make(BatchPolicy(enabled=True, max_batch_size=8, pad_to_buckets=True), ctx)
    x, f = submit(batcher, 3)
    out = f.result(RESULT_TIMEOUT_S)
    np.testing.assert_array_equal(out["y"], x * 2)
    np.testing.assert_array_equal(out["table"], np.arange(5, dtype=np.float32))
    assert ctx.calls == [4, 3]
    batcher.close()

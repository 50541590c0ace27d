"""com.microsoft GroupQueryAttention against onnxruntime's CPU kernel: prompt (with right padding), token
generation with a KV cache, rotary, local window, softcap, smooth softmax, packed QKV."""
from __future__ import annotations

import numpy as np
import pytest
from ms_oracle import check_ms, rand

B, S, N, NKV, H = 2, 4, 4, 2, 8


def _inputs(s=S, past=0, seqlens=None, total=None, packed=False, rotary=False, seed=0, B=B, H=H):
    d = {}
    if packed:
        d["q"] = rand((B, s, (N + 2 * NKV) * H), seed)
        d["k"] = d["v"] = None
    else:
        d["q"], d["k"], d["v"] = rand((B, s, N * H), seed), rand((B, s, NKV * H), seed + 1), rand((B, s, NKV * H), seed + 2)
    d["past_k"] = rand((B, NKV, past, H), seed + 3) if past else np.zeros((B, NKV, 0, H), np.float32)
    d["past_v"] = rand((B, NKV, past, H), seed + 4) if past else np.zeros((B, NKV, 0, H), np.float32)
    total = total if total is not None else past + s
    d["seqlens"] = np.array(seqlens if seqlens is not None else [total - 1] * B, np.int32)
    d["total"] = np.array(total, np.int32)
    if rotary:
        d["cos"], d["sin"] = rand((32, H // 2), 7, -1, 1), rand((32, H // 2), 8, -1, 1)
    return d


OUTS = ["y", "present_k", "present_v"]


@pytest.mark.parametrize("attrs", [{}, {"softcap": 2.0}, {"local_window_size": 2}, {"smooth_softmax": 1},
                                   {"scale": 0.2}])
def test_gqa_prompt(attrs):
    check_ms("GroupQueryAttention", _inputs(), {"num_heads": N, "kv_num_heads": NKV, **attrs}, outputs=OUTS)


def test_gqa_prompt_right_padding():
    d = _inputs(seqlens=[3, 1])
    check_ms("GroupQueryAttention", d, {"num_heads": N, "kv_num_heads": NKV}, outputs=["y"])


def test_gqa_decode_with_cache():
    check_ms("GroupQueryAttention", _inputs(s=1, past=5), {"num_heads": N, "kv_num_heads": NKV}, outputs=OUTS)


def test_gqa_decode_ragged_rows():
    """Rows at different lengths inside one cache buffer: each writes its token after its own past. (onnxruntime
    1.32 gives another `y` here when the present outputs are not requested, so they are requested.)"""
    d = _inputs(s=1, past=5, seqlens=[5, 2], total=6)
    check_ms("GroupQueryAttention", d, {"num_heads": N, "kv_num_heads": NKV}, outputs=OUTS)


def test_gqa_chunk_after_cache():
    """Several new tokens after a cache (onnxruntime takes this for batch 1 only)."""
    check_ms("GroupQueryAttention", _inputs(s=3, past=4, B=1), {"num_heads": N, "kv_num_heads": NKV}, outputs=OUTS)


@pytest.mark.parametrize("interleaved", [0, 1])
def test_gqa_rotary(interleaved):
    check_ms("GroupQueryAttention", _inputs(s=1, past=3, rotary=True, H=16),
             {"num_heads": N, "kv_num_heads": NKV, "do_rotary": 1, "rotary_interleaved": interleaved}, outputs=OUTS)


def test_gqa_packed_qkv():
    check_ms("GroupQueryAttention", _inputs(packed=True), {"num_heads": N, "kv_num_heads": NKV}, outputs=OUTS)

"""LayerNorm row kernels on the GPU: plain, and writing a quantized copy (kiln::LayerNormQuantize), against
the two-kernel form (LayerNorm, then Kiln's quantize pass) and torch; rows per program and warps varied.

    python benchmarks/bench_rows.py [--rows 8192] [--cols 768]

Times: median of CUDA-graph replays (each replay runs the kernel 20 times), µs per kernel.
"""
from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from kiln.backends.triton import cache, quant, rows  # noqa: E402
from kiln.ops.quantized import quantize  # noqa: E402
from run import graph_replay_ms  # noqa: E402


def graph_us(fn) -> float:
    return graph_replay_ms(fn, 30, 20) * 1000


def div_rn_source(spec) -> str:
    """The row kernel's GPU source with the quantizing division through libdevice's div_rn instead of the
    reciprocal + FMA form (``_div_by``'s body replaced in this text; Kiln's helper table is left alone)."""
    by_reciprocal = quant.helper_source({"_div_by"}, False)[-1]  # "    <the GPU body of _div_by>"
    src = rows.row_source(spec, False)
    assert by_reciprocal in src, "the row kernel no longer divides through _div_by"
    return src.replace(by_reciprocal, "    return libdevice.div_rn(x, s)")


def row_kernel(q_dtype, nrows, warps, m, n, x, w, b, scale, tag=""):
    spec = rows.RowSpec("layernorm", x.dtype, w.dtype, b.dtype, x.dtype, False, False, q_dtype)
    source = div_rn_source if tag == "div_rn" else (lambda s: rows.row_source(s, False))
    mod = cache.load(cache.digest("rows-bench", spec, tag), lambda: source(spec))
    out = torch.empty_like(x)
    qt = torch.empty(m, n, dtype=torch.float8_e4m3fn if q_dtype == "fp8e4m3" else torch.int8, device=x.device)
    block = 1 << (n - 1).bit_length()
    q_args = [] if q_dtype is None else [qt, scale, float(1.0 / torch.tensor(scale, dtype=torch.float32))]

    def run():
        mod.kernel[((m + nrows - 1) // nrows,)](out, x, w, b, *q_args, m, n, n, n, 1e-5, ROWS=nrows, BLOCK=block,
                                                num_warps=warps)
        return out, qt
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--cols", type=int, default=768)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    m, n = a.rows, a.cols
    x = torch.randn(m, n, device="cuda").half() * 2 + 0.5
    w = (1 + 0.1 * torch.randn(n, device="cuda")).half()
    b = (0.1 * torch.randn(n, device="cuda")).half()
    scale = float(torch.tensor(0.011, dtype=torch.float32))
    ref_y = torch.nn.functional.layer_norm(x, (n,), w, b)
    rows_out = []
    rows_out.append(("torch layer_norm", "-", graph_us(lambda: torch.nn.functional.layer_norm(x, (n,), w, b)), ""))
    qk = quant.Quantize(0.011, "fp8e4m3")
    q8 = torch.empty(m, n, dtype=torch.float8_e4m3fn, device="cuda")
    rows_out.append(("kiln quantize pass", "-", graph_us(lambda: qk(ref_y, q8)), ""))
    for q_dtype in (None, "fp8e4m3", "int8"):
        for nrows, warps in ((1, 4), (2, 4), (2, 8), (4, 4), (4, 8)):
            run = row_kernel(q_dtype, nrows, warps, m, n, x, w, b, scale)
            y, qt = run()
            err = float((y.float() - ref_y.float()).abs().max())
            note = f"max|dy| {err:.1e}"
            if q_dtype:
                want = quantize(y, scale, 0, q_dtype)
                note += f", codes equal: {bool(torch.equal(qt.float(), want.float()))}"
            rows_out.append((f"kiln layernorm{'+' + q_dtype if q_dtype else ''}", f"ROWS={nrows} warps={warps}",
                             graph_us(run), note))
    # the same with the quantizing division through libdevice's div_rn instead of the reciprocal + FMA form
    for nrows, warps in ((1, 4), (2, 4)):
        run = row_kernel("fp8e4m3", nrows, warps, m, n, x, w, b, scale, "div_rn")
        y, qt = run()
        want = quantize(y, 0.011, 0, "fp8e4m3")
        rows_out.append(("kiln layernorm+fp8 div_rn", f"ROWS={nrows} warps={warps}", graph_us(run),
                         f"codes equal: {bool(torch.equal(qt.float(), want.float()))}"))
    print(torch.cuda.get_device_name(), f"[{m}, {n}] float16")
    print(f"{'kernel':<28}{'config':<20}{'us':>8}  note")
    for name, cfg, us, note in rows_out:
        print(f"{name:<28}{cfg:<20}{us:8.2f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

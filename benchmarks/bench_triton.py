"""Generated Triton kernels against the equivalent torch op sequences, on one CUDA GPU.

    python benchmarks/bench_triton.py                 # the default table
    python benchmarks/bench_triton.py --sweep         # also elementwise BLOCK/num_warps candidates
    python benchmarks/bench_triton.py --json out.json

Times are medians of CUDA-event timings (triton.testing.do_bench, return_mode="median") after warm-up,
every case's inputs larger than L2 so repeated runs do not measure the cache. GB/s counts the fewest bytes
the computation must move (each input read once, the output written once); the ceiling is a measured
device-to-device copy (bytes read + written), expected near 4.3 TB/s on an H200. Every generated result is
checked against the torch sequence before it is timed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kiln.backends import triton as kt  # noqa: E402
from kiln.backends.triton.launch import ElementwiseLaunch  # noqa: E402
from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.fused_steps import parse_program  # noqa: E402

DEV = torch.device("cuda")
SHRINK = 1  # --smoke: sizes divided by this, on the CPU under TRITON_INTERPRET=1 (checks the script, times nothing real)


def sz(n: int) -> int:
    return max(16, n // SHRINK)


def bench(fn) -> float:
    if DEV.type == "cpu":
        import time
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    from triton.testing import do_bench
    return do_bench(fn, warmup=50, rep=300, return_mode="median")  # milliseconds


def nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def copy_ceiling() -> float:
    a = torch.empty(sz(1 << 30), dtype=torch.uint8, device=DEV)  # 1 GiB, far past L2
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a))
    return 2 * a.numel() / ms / 1e6  # GB/s


def region_layer(program, n, attrs=None):
    node = Node("Elementwise", [Value(f"x{k}") for k in range(n)], [Value("y")],
                {"program": program, "attrs": attrs or []}, name="r", domain="kiln")
    layer, why = kt.try_compile_layer(node, DEV, on_cpu=DEV.type == "cpu")
    assert layer is not None, why
    return layer, node.attrs


def check(got, ref, tol):
    err = float(torch.linalg.vector_norm(got.double() - ref.double()) / torch.linalg.vector_norm(ref.double()))
    if not err < tol:
        raise AssertionError(f"generated result off by {err:.2e} (tolerance {tol})")
    return err


def cases(dtype):
    ctx = KernelContext(opset=17, device=DEV)
    M, N = sz(16384), sz(4096)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    out = []

    # 1. bias + GELU + residual: the MLP tail, three torch kernels
    x, b, r = torch.randn(M, N, device=DEV, dtype=dtype), torch.randn(N, device=DEV, dtype=dtype), \
        torch.randn(M, N, device=DEV, dtype=dtype)
    layer, attrs = region_layer(["Add(i0,i1)", "Gelu(t0)", "Add(t1,i2)"], 3)
    out.append(("bias+gelu+residual", lambda: layer(ctx, [x, b, r], attrs), lambda: F.gelu(x + b) + r,
                nbytes(x, b, r, x), tol))

    # 2. a decomposed LayerNorm tail with broadcasts: (x - mean) / sqrt(var + eps) * g + beta
    mean, var = x.float().mean(-1, keepdim=True).to(dtype), x.float().var(-1, keepdim=True).to(dtype)
    g, beta = torch.randn(N, device=DEV, dtype=dtype), torch.randn(N, device=DEV, dtype=dtype)
    eps = torch.tensor(1e-5, device=DEV, dtype=dtype)
    layer2, attrs2 = region_layer(["Sub(i0,i1)", "Add(i2,i3)", "Sqrt(t1)", "Div(t0,t2)", "Mul(t3,i4)", "Add(t4,i5)"], 6)
    out.append(("norm tail (6 ops, bcast)", lambda: layer2(ctx, [x, mean, var, eps, g, beta], attrs2),
                lambda: (x - mean) / torch.sqrt(var + eps) * g + beta, nbytes(x, x), tol))

    # 3. SiLU gate (SwiGLU): x * sigmoid(x) * y
    layer3, attrs3 = region_layer(["Sigmoid(i0)", "Mul(i0,t0)", "Mul(t1,i1)"], 2)
    out.append(("swiglu gate", lambda: layer3(ctx, [x, r], attrs3), lambda: F.silu(x) * r, nbytes(x, r, x), tol))

    # 4. a transposed operand (strided path)
    xt = torch.randn(N, M, device=DEV, dtype=dtype).t()
    out.append(("add transposed (strided)", lambda: layer3(ctx, [xt, r], attrs3), lambda: F.silu(xt) * r,
                nbytes(xt, r, x), tol))

    # 5-7. row kernels
    def row(op, shape, extra):
        node = Node(op, [Value(f"x{k}") for k in range(1 + len(extra))], [Value("y")], {"axis": -1, "epsilon": 1e-5},
                    name=op)
        lay = kt.compile_layer(node, DEV, opset=23, on_cpu=DEV.type == "cpu")
        return lambda xx: lay(KernelContext(opset=23, device=DEV), [xx, *extra], node.attrs)

    for rows, cols in ((sz(16384), sz(4096)), (sz(4096), sz(32768)), (sz(262144), 128)):
        xs = torch.randn(rows, cols, device=DEV, dtype=dtype)
        sm = row("Softmax", (rows, cols), [])
        out.append((f"softmax {rows}x{cols}", (lambda f=sm, t=xs: f(t)), (lambda t=xs: torch.softmax(t, -1)),
                    nbytes(xs, xs), tol))
        w, bb = torch.randn(cols, device=DEV, dtype=dtype), torch.randn(cols, device=DEV, dtype=dtype)
        ln = row("LayerNormalization", (rows, cols), [w, bb])
        out.append((f"layernorm {rows}x{cols}", (lambda f=ln, t=xs: f(t)),
                    (lambda t=xs, w=w, bb=bb, c=cols: F.layer_norm(t, (c,), w, bb, 1e-5)), nbytes(xs, xs), tol))
        rms = row("RMSNormalization", (rows, cols), [w])
        torch_rms = getattr(F, "rms_norm", None)
        ref = (lambda t=xs, w=w, c=cols: torch_rms(t, (c,), w, 1e-5)) if torch_rms else \
            (lambda t=xs, w=w: (t.float() * torch.rsqrt(t.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(t.dtype) * w)
        out.append((f"rmsnorm {rows}x{cols}", (lambda f=rms, t=xs: f(t)), ref, nbytes(xs, xs), tol))

    # 8. Linear + GELU epilogue: cuBLAS (bias fused there) + one generated pass, vs F.linear + F.gelu
    if dtype != torch.float32:
        a, w, bias = torch.randn(sz(8192), sz(4096), device=DEV, dtype=dtype), \
            torch.randn(sz(4096), sz(4096), device=DEV, dtype=dtype) * 0.02, torch.randn(sz(4096), device=DEV, dtype=dtype)
        node = Node("Linear", [Value("x"), Value("w"), Value("b"), Value("r")], [Value("y")],
                    {"epilogue": ["gelu", "add:3"]}, name="fc", domain="kiln")
        lin = kt.compile_layer(node, DEV, on_cpu=DEV.type == "cpu")
        res = torch.randn(sz(8192), sz(4096), device=DEV, dtype=dtype)
        out.append(("linear+gelu+res 8192x4096x4096", lambda: lin(ctx, [a, w, bias, res], node.attrs),
                    lambda: F.gelu(F.linear(a, w, bias)) + res, None, 2e-2))
        from kiln.backends.triton.gemm import CONFIGS
        from kiln.backends.triton.layers import GemmLayer
        for cfg in CONFIGS:  # the GEMM template, epilogue fused, at each block configuration
            gl = GemmLayer(node, None, cfg)
            out.append((f"  triton gemm {'x'.join(map(str, cfg))}", (lambda gl=gl: gl(ctx, [a, w, bias, res], node.attrs)),
                        lambda: F.gelu(F.linear(a, w, bias)) + res, None, 2e-2))

    # 9. a small tensor: the per-call (launch) overhead, which CUDA graphs remove in an engine
    xs, bs, rs = x[:64, :768].contiguous(), b[:768].contiguous(), r[:64, :768].contiguous()
    out.append(("small 64x768 bias+gelu+res", lambda: layer(ctx, [xs, bs, rs], attrs), lambda: F.gelu(xs + bs) + rs,
                nbytes(xs, bs, rs, xs), tol))
    return out


def sweep(dtype):
    ctx_rows = []
    x, r = torch.randn(sz(16384), sz(4096), device=DEV, dtype=dtype), torch.randn(sz(16384), sz(4096), device=DEV, dtype=dtype)
    for block in (512, 1024, 2048, 4096):
        for warps in (4, 8):
            program = [line for line, _ in parse_program(["Sigmoid(i0)", "Mul(i0,t0)", "Mul(t1,i1)"])]
            launch = ElementwiseLaunch(program, [{}, {}, {}], 17, config=(block, warps))
            ms = bench(lambda: launch([x, r]))
            ctx_rows.append((block, warps, ms, 3 * x.numel() * x.element_size() / ms / 1e6))
    return ctx_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtypes", default="bf16,fp16,fp32")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU through the Triton interpreter")
    args = ap.parse_args()
    if args.smoke:
        global DEV, SHRINK
        DEV, SHRINK = torch.device("cpu"), 64
    elif not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    ceiling = copy_ceiling()
    names = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    results = []
    for dn in args.dtypes.split(","):
        dtype = names[dn]
        for name, gen, ref, moved, tol in cases(dtype):
            err = check(gen(), ref(), tol)
            t_gen, t_ref = bench(gen), bench(ref)
            results.append({"case": name, "dtype": dn, "triton_ms": t_gen, "torch_ms": t_ref, "rel_err": err,
                            "triton_GBps": moved / t_gen / 1e6 if moved else None,
                            "torch_GBps": moved / t_ref / 1e6 if moved else None})
    sw = {dn: sweep(names[dn]) for dn in args.dtypes.split(",")} if args.sweep else {}
    if args.json:
        Path(args.json).write_text(json.dumps({"copy_ceiling_GBps": ceiling, "results": results,
                                               "sweep": sw}, indent=1))
    print(f"\ndevice: {torch.cuda.get_device_name() if DEV.type == 'cuda' else 'cpu (smoke run)'}  measured copy ceiling: {ceiling:,.0f} GB/s")
    print(f"{'case':34} {'dtype':5} {'triton ms':>10} {'torch ms':>10} {'speedup':>8} {'GB/s':>8} {'% ceil':>7} "
          f"{'rel err':>8}")
    for r in results:
        gbs = r["triton_GBps"]
        print(f"{r['case']:34} {r['dtype']:5} {r['triton_ms']:10.4f} {r['torch_ms']:10.4f} "
              f"{r['torch_ms'] / r['triton_ms']:7.2f}x {gbs or 0:8.0f} {100 * (gbs or 0) / ceiling:6.1f}% "
              f"{r['rel_err']:8.1e}")
    for dn, rows in sw.items():
        print(f"\nelementwise sweep ({dn}, swiglu gate 16384x4096): BLOCK warps ms GB/s")
        for block, warps, ms, gbs in rows:
            print(f"  {block:5} {warps:2} {ms:8.4f} {gbs:8.0f}")


if __name__ == "__main__":
    main()

"""kiln::QConv's Triton implicit-GEMM convolution (int8 / fp8 on the tensor cores) against fp16 cuDNN, on
ResNet-50's convolution shapes at batch 256, one CUDA GPU.

    python benchmarks/bench_qconv.py                       # every shape, every block config, the table
    python benchmarks/bench_qconv.py --configs 0,1 --batch 128
    python benchmarks/bench_qconv.py --json out.json
    python benchmarks/bench_qconv.py --smoke               # tiny shapes on the CPU (TRITON_INTERPRET=1)

Per shape: fp16 cuDNN (channels-last F.conv2d + bias, TF32 irrelevant) and, at each block config, the Triton
kernel in three modes: ``int8 q>q`` (int8 NHWC in, requantized int8 out: a layer inside a chain),
``int8 h>h`` and ``fp8 h>h`` (fp16 in, quantized while loaded, fp16 out). Times are medians of CUDA-event
timings after warm-up (compilation included there, not in the time). TFLOP/s counts 2*N*OH*OW*O*C*KH*KW.
Every result is checked before it is timed, on the first images of the batch: the float outputs against
the same layer in float64 on the dequantized values (relative max error), the requantized output
against quantize(float64 result) (at most one step off). Exit status 1 when any check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kiln.backends.triton.qconv import CONFIGS, INTERPRET_CONFIG  # noqa: E402
from kiln.tactics.qconv import qconv_tactic  # noqa: E402
from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.quantized import quantize  # noqa: E402
from kiln.tactics.space import NotApplicable  # noqa: E402

# (name, H=W, C, O, kernel, stride); pad = kernel // 2
SHAPES = [
    ("conv2_3x3", 56, 64, 64, 3, 1),
    ("conv3_3x3", 28, 128, 128, 3, 1),
    ("conv4_3x3", 14, 256, 256, 3, 1),
    ("conv5_3x3", 7, 512, 512, 3, 1),
    ("conv2_1x1_up", 56, 64, 256, 1, 1),
    ("conv2_1x1_down", 56, 256, 64, 1, 1),
    ("conv3_3x3_s2", 56, 128, 128, 3, 2),
    ("conv3_1x1_s2_ds", 56, 256, 512, 1, 2),
    ("stem_7x7_s2", 224, 3, 64, 7, 2),
]
SMOKE_SHAPES = [("3x3", 6, 16, 16, 3, 1), ("3x3_s2", 7, 16, 32, 3, 2), ("1x1", 6, 32, 16, 1, 1),
                ("stem", 9, 3, 16, 7, 2)]
TOL = {"int8 h>h": 3e-3, "fp8 h>h": 2e-2, "fp16 cudnn": 3e-3}  # fp16 output rounding; fp8 wgmma sums
X_SCALE, OUT_SCALE = 4.0 / 127, 0.05
CHECK_IMAGES = 4


def layer(c, o, k, stride, fmt, input_quantized, requant, gen, device):
    """(kiln::QConv node, its constants, float weight, bias): a weight and per-channel scales like a real
    layer's (amax / 127 per channel for int8, one amax / 448 scale for fp8)."""
    w = torch.randn(o, c, k, k, generator=gen) * (2.0 / (c * k * k)) ** 0.5
    b = torch.randn(o, generator=gen) * 0.1
    if fmt == "fp8e4m3":
        sw = w.abs().max().reshape(1) / 448.0
        wq = (w / sw).clamp(-448, 448).to(torch.float8_e4m3fn)
    else:
        sw = w.abs().reshape(o, -1).amax(1) / 127.0
        wq = torch.round(w / sw.reshape(-1, 1, 1, 1)).clamp(-127, 127).to(torch.int8)
    ins = [Value("x"), Value("w", const=wq.to(device)), Value("sw", const=sw.to(device)), Value("b", const=b.to(device))]
    attrs = {"strides": [stride] * 2, "pads": [k // 2] * 4, "x_scale": X_SCALE, "x_zero_point": 0, "x_dtype": fmt,
             "channels_last": 1, "epilogue": ["relu"]}
    if input_quantized:
        attrs["input_quantized"] = 1
    if requant:
        attrs.update(out_scale=OUT_SCALE, out_zero_point=0, out_dtype="int8")
    node = Node("QConv", ins, [Value("y")], attrs, name="bench", domain="kiln")
    return node, {v.id: v.const for v in ins[1:]}


def oracle(node, x) -> torch.Tensor:
    """The layer in float64 on the dequantized values (a reference independent of the kernels)."""
    a = node.attrs
    xq = x if a.get("input_quantized") else quantize(x, a["x_scale"], 0, a["x_dtype"])
    wq, sw, b = (v.const for v in node.inputs[1:4])
    wd = wq.double() * sw.double().reshape(-1, 1, 1, 1)
    y = F.conv2d(xq.double() * a["x_scale"], wd, b.double(), stride=a["strides"], padding=a["pads"][:2])
    return y.relu()


def rel_err(got, ref) -> float:
    return float((got.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-30))


def median_ms(fn, device, warmup=3, iters=20) -> float:
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        import time
        t = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            t.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(t)
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def bench_shape(shape, batch, configs, device, ctx, failures: list) -> list[dict]:
    name, hw, c, o, k, stride = shape
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(batch, c, hw, hw, generator=gen) * 1.0).to(device).half()
    x = x.contiguous(memory_format=torch.channels_last)
    oh = (hw + 2 * (k // 2) - k) // stride + 1
    flops = 2.0 * batch * oh * oh * o * c * k * k
    rows = []

    def record(mode, cfg, ms, err, ok):
        rows.append({"shape": name, "mode": mode, "config": cfg, "ms": ms, "tflops": flops / ms / 1e9,
                     "err": err, "ok": ok})
        if not ok:
            failures.append(f"{name} {mode} {cfg}: error {err}")

    # fp16 cuDNN, channels-last, on the unquantized weights (its own float64 reference)
    w = (torch.randn(o, c, k, k, generator=gen) * (2.0 / (c * k * k)) ** 0.5).to(device)
    b = torch.randn(o, generator=gen).to(device)
    wh = w.half().contiguous(memory_format=torch.channels_last)
    run16 = lambda: F.conv2d(x, wh, b.half(), stride, k // 2).relu_()  # noqa: E731
    y16 = run16()
    ref16 = F.conv2d(x[:CHECK_IMAGES].double(), wh.double(), b.half().double(), stride, k // 2).relu()
    err = rel_err(y16[:CHECK_IMAGES], ref16)
    record("fp16 cudnn", "-", median_ms(run16, device), err, err < TOL["fp16 cudnn"])

    xq = quantize(x, X_SCALE, 0, "int8").contiguous(memory_format=torch.channels_last)
    modes = [("int8 q>q", "int8", True, True, xq), ("int8 h>h", "int8", False, False, x),
             ("fp8 h>h", "fp8e4m3", False, False, x)]
    for mode, fmt, iq, rq, xin in modes:
        node, consts = layer(c, o, k, stride, fmt, iq, rq, torch.Generator().manual_seed(1), device)
        ref = oracle(node, xin[:CHECK_IMAGES])
        for cfg in configs:
            try:
                t = qconv_tactic(node, {"config": list(cfg)}, consts, device, on_cpu=device.type == "cpu")
            except NotApplicable as e:
                rows.append({"shape": name, "mode": mode, "config": cfg, "skipped": str(e)})
                continue
            ins = [xin] + [v.const for v in node.inputs[1:]]
            y = t.kernel(ctx, ins, node.attrs)
            if rq:  # the requantized output: quantize(exact result) or one step next to it
                q_ref = quantize(ref, OUT_SCALE, 0, "int8").int()
                diff = (y[:CHECK_IMAGES].int() - q_ref).abs()
                err, ok = float(diff.max()), int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01
            else:
                err = rel_err(y[:CHECK_IMAGES], ref)
                ok = err < TOL[mode]
            record(mode, cfg, median_ms(lambda: t.kernel(ctx, ins, node.attrs), device), err, ok)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'shape':<17}{'mode':<12}{'config':<28}{'ms':>9}{'TFLOP/s':>9}{'vs fp16':>9}{'err':>10}  ok")
    base = {r["shape"]: r["ms"] for r in rows if r["mode"] == "fp16 cudnn"}
    for r in rows:
        if "skipped" in r:
            print(f"{r['shape']:<17}{r['mode']:<12}{str(r['config']):<28}  skipped: {r['skipped']}")
            continue
        print(f"{r['shape']:<17}{r['mode']:<12}{str(r['config']):<28}{r['ms']:>9.3f}{r['tflops']:>9.1f}"
              f"{base[r['shape']] / r['ms']:>8.2f}x{r['err']:>10.2e}  {'ok' if r['ok'] else 'WRONG'}")


def print_best(rows: list[dict]) -> None:
    print("\nbest config per shape and mode (speed-up over fp16 cuDNN):")
    base = {r["shape"]: r["ms"] for r in rows if r["mode"] == "fp16 cudnn"}
    total = {}
    for shape in base:
        line = f"{shape:<17}fp16 {base[shape]:7.3f} ms"
        total["fp16"] = total.get("fp16", 0.0) + base[shape]
        for mode in ("int8 q>q", "int8 h>h", "fp8 h>h"):
            cand = [r for r in rows if r["shape"] == shape and r["mode"] == mode and r.get("ok")]
            if cand:
                best = min(cand, key=lambda r: r["ms"])
                total[mode] = total.get(mode, 0.0) + best["ms"]
                line += f" | {mode} {best['ms']:7.3f} ms {base[shape] / best['ms']:5.2f}x {tuple(best['config'])}"
        print(line)
    print("sum over shapes: " + ", ".join(f"{m} {v:.3f} ms" for m, v in total.items()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--configs", default="all", help="indices into qconv.CONFIGS, e.g. 0,2 (default all)")
    p.add_argument("--shapes", default="all", help="shape names, comma-separated (default all)")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    args = p.parse_args()
    if args.smoke:
        device, shapes, batch, configs = torch.device("cpu"), SMOKE_SHAPES, 2, [INTERPRET_CONFIG]
    else:
        if not torch.cuda.is_available():
            print("no CUDA device (use --smoke for the CPU check)")
            return 2
        device, shapes, batch = torch.device("cuda"), SHAPES, args.batch
        configs = CONFIGS if args.configs == "all" else [CONFIGS[int(i)] for i in args.configs.split(",")]
        print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  batch {batch}")
    if args.shapes != "all":
        shapes = [s for s in shapes if s[0] in args.shapes.split(",")]
    ctx = KernelContext(opset=17, device=device, num_outputs=1)
    failures: list[str] = []
    rows = []
    for shape in shapes:
        rows += bench_shape(shape, batch, configs, device, ctx, failures)
    print_table(rows)
    print_best(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    if failures:
        print("\nWRONG RESULTS:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

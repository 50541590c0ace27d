"""GPU check of the 8-bit GEMM tactics (kiln/tactics/quantized.py) against fp16 F.linear.

    python benchmarks/bench_qgemm.py [--no-graph] [--iters 50]

Shapes: BERT-base batch 64 seq 128 (M = 8192; (K, N) = QKV, attention out, FFN1 + GELU, FFN2 + residual) and
ResNet-50 batch 256 1x1 convolutions (as [N*H*W, C] GEMMs, channels-last) plus one 3x3 (qconv_fp16).
For each: median ms over CUDA-event timings (after warm-up, replayed from a CUDA graph unless --no-graph) of
fp16, the layer's own kernel ("torch") and each tactic; the relative L2 error of each against a float64
reference computed from the same quantized X. Exits 1 when a result is wrong (error over its bound).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])

from kiln.ir.graph import Node, Value  # noqa: E402
from kiln.ops import KernelContext  # noqa: E402
from kiln.ops.quantized import qconv, qlinear, quantize  # noqa: E402
from kiln.tactics import space  # noqa: E402

BERT = [("qkv", 768, 2304, []), ("attn_out+res", 768, 768, ["add:4"]), ("ffn1+gelu", 768, 3072, ["gelu"]),
        ("ffn2+res", 3072, 768, ["add:4"])]
RESNET = [("r50 1x1 64->256 56x56", 64, 256, 56, 1), ("r50 1x1 256->64 56x56", 256, 64, 56, 1),
          ("r50 1x1 512->128 28x28", 512, 128, 28, 1), ("r50 1x1 1024->256 14x14", 1024, 256, 14, 1),
          ("r50 1x1 2048->512 7x7", 2048, 512, 7, 1), ("r50 3x3 64->64 56x56", 64, 64, 56, 3)]
BOUND = {"int8": 3e-3, "fp8e4m3": 1e-2}  # vs float64 from the same quantized X (fp16 output rounding, fp8 GEMM)


def time_ms(fn, graph: bool, iters: int) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
        run = fn
        if graph:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=stream):
                fn()
            run = g.replay
        ts = []
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(stream)
            run()
            b.record(stream)
            b.synchronize()
            ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def make_node(op, wq, ws, bias, fmt, epilogue, x_scale, **attrs):
    ins = [Value("x"), Value("wq", const=wq), Value("ws", const=ws), Value("b", const=bias), Value("r")]
    a = {"x_scale": x_scale, "x_zero_point": 0, "x_dtype": fmt, "epilogue": epilogue, **attrs}
    node = Node(op, ins, [Value("y")], a, name=op, domain="kiln")
    return node, {v.id: v.const for v in ins if v.const is not None}


def weights(n, k_shape, fmt, dev):
    w = torch.randn(n, *k_shape, device=dev) * 0.05
    if fmt == "fp8e4m3":
        s = w.abs().max() / 448.0
        return (w / s).to(torch.float8_e4m3fn), s.reshape(1).float()
    s = w.reshape(n, -1).abs().amax(1) / 127.0
    return torch.round(w / s.reshape(-1, *[1] * len(k_shape))).clamp(-127, 127).to(torch.int8), s


def reference(node, inputs, conv: bool) -> torch.Tensor:
    a = node.attrs
    xq = quantize(inputs[0], a["x_scale"], 0, a["x_dtype"]).double()
    wq, ws, b = (t.double() for t in inputs[1:4])
    if conv:
        pad = (wq.shape[-1] - 1) // 2
        y = F.conv2d(xq, wq, None, padding=pad) * (ws * a["x_scale"]).reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)
    else:
        y = (xq @ wq.t()) * (ws * a["x_scale"]) + b
    for step in a["epilogue"]:
        y = F.gelu(y) if step == "gelu" else F.relu(y) if step == "relu" else y + inputs[4].double()
    return y


def rel(got, ref) -> float:
    return float((got.double() - ref).norm() / ref.norm())


def bench_case(label, node, consts, inputs, fp16_fn, conv, fmt, args, rows) -> bool:
    dev = inputs[0].device
    ctx = KernelContext(opset=21, device=dev)
    own = qconv if conv else qlinear
    cands = {"torch": lambda ins: own(ctx, ins, node.attrs)}
    gemm = "fp8_fast" if fmt == "fp8e4m3" else "int8_fast"
    names = ([] if conv and node.inputs[1].const.shape[-1] != 1 else [gemm]) + (["qconv_fp16"] if conv else [])
    layers = {}
    for name in names:
        try:
            t = space.make(space.Choice(name), node, consts, dev)
            layers[name] = t.kernel
            cands[name] = (lambda k: lambda ins: k(ctx, ins, node.attrs))(t.kernel)
        except space.NotApplicable as e:
            print(f"  {label}: {name} not applicable: {e}")
    ref = reference(node, inputs, conv)
    ok = True
    t16 = time_ms(fp16_fn, not args.no_graph, args.iters)
    for name, fn in cands.items():
        y = fn(list(inputs))
        err = rel(y, ref)
        good = err <= BOUND[fmt] and torch.isfinite(y).all().item()
        fell = getattr(layers.get(name), "fallbacks", None)
        ok &= good
        ms = time_ms(lambda: fn(inputs), not args.no_graph, args.iters)
        rows.append((label, fmt, name, t16, ms, t16 / ms, err, "ok" if good else "WRONG"))
        if fell:
            print(f"  {label} {name}: fell back: {fell}")
    return ok


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--no-graph", action="store_true")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--formats", default="fp8e4m3,int8")
    args = p.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    rows, ok = [], True
    with torch.inference_mode():
        for fmt in args.formats.split(","):
            for label, k, n, epi in BERT:
                x = torch.randn(64, 128, k, device=dev, dtype=torch.float16)
                wq, ws = weights(n, (k,), fmt, dev)
                b = torch.randn(n, device=dev) * 0.1
                r = torch.randn(64, 128, n, device=dev, dtype=torch.float16)
                node, consts = make_node("QLinear", wq, ws, b, fmt, epi, float(x.abs().max()) / (448 if fmt == "fp8e4m3" else 127))
                w16, b16 = torch.randn(n, k, device=dev, dtype=torch.float16) * 0.05, b.half()
                fp16 = (lambda x, w16, b16, r, epi: lambda: (
                    F.gelu(F.linear(x, w16, b16)) if epi == ["gelu"] else
                    F.linear(x, w16, b16).add_(r) if epi else F.linear(x, w16, b16)))(x, w16, b16, r, epi)
                ok &= bench_case(f"bert {label}", node, consts, [x, wq, ws, b, r], fp16, False, fmt, args, rows)
            for label, c, o, hw, ks in RESNET:
                x = torch.randn(256, c, hw, hw, device=dev, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
                wq, ws = weights(o, (c, ks, ks), fmt, dev)
                b = torch.randn(o, device=dev) * 0.1
                node, consts = make_node("QConv", wq, ws, b, fmt, ["relu"], float(x.abs().max()) / (448 if fmt == "fp8e4m3" else 127),
                                         channels_last=1, pads=[(ks - 1) // 2] * 4)
                w16 = torch.randn(o, c, ks, ks, device=dev, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
                b16 = b.half()
                fp16 = (lambda x, w16, b16, ks: lambda: F.conv2d(x, w16, b16, padding=(ks - 1) // 2).relu_())(x, w16, b16, ks)
                ok &= bench_case(label, node, consts, [x, wq, ws, b, None], fp16, True, fmt, args, rows)
    print(f"\n| layer | fmt | tactic | fp16 ms | ms | vs fp16 | rel err vs f64 | check |\n|---|---|---|---|---|---|---|---|")
    for label, fmt, name, t16, ms, sp, err, good in rows:
        print(f"| {label} | {fmt} | {name} | {t16:.4f} | {ms:.4f} | {sp:.2f}x | {err:.2e} | {good} |")
    print("\nALL CORRECT" if ok else "\nSOME RESULTS ARE WRONG")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

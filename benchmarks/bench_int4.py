"""INT4 weight-only GEMM against fp16 on the GPU (issue 19's bar: at batch 1 the INT4 GEMM beats the fp16 GEMM on
a 4096x4096 weight), through whole Kiln engines so the tuner picks each one's best tactic:

    python benchmarks/bench_int4.py [--k 4096] [--n 4096] [--batches 1,16] [--block 32]

One MatMul model with a random [K, N] weight, built as an fp16 engine and as an fp16 + int4_weights engine
(MatMulNBits, the Triton kernel that dequantizes in registers), timed in blocks (CUDA events, median of 200
calls per block, blocks alternated), with the relative error of each against float32. Prints a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kiln  # noqa: E402  (before torch: the CPU pool's wait policy)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def matmul_model(k: int, n: int):
    w = (np.random.default_rng(0).standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), torch.from_numpy(w)


def time_ms(ctx, feed, calls: int = 200) -> float:
    for _ in range(10):
        ctx.infer(feed)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        ctx.infer(feed)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--blocks", type=int, default=5)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 1
    model, w = matmul_model(a.k, a.n)
    batches = [int(b) for b in a.batches.split(",")]
    prof = kiln.Profile.of(x=((1, a.k), (batches[0], a.k), (max(batches), a.k)))
    engines = {"fp16": kiln.build(model, device="cuda", fp16=True, profiles=[prof], accuracy_target=None),
               "int4 (fp16 act)": kiln.build(model, device="cuda", fp16=True, int4_weights=True,
                                             int4_block_size=a.block, profiles=[prof], accuracy_target=None)}
    for name, e in engines.items():
        print(f"{name}: tactics {sorted(set(e.tactics.values()))}")
        for layer in e.report.layers:  # what the tuner timed or rejected, so a missed bar says why
            print(f"  {layer.name} [{layer.op}] -> {layer.tactic}: {layer.candidates}")
        for note in e.report.notes:
            print(f"  note: {note}")
    print(f"card: {torch.cuda.get_device_name()}; weight {a.k}x{a.n}; int4 block {a.block}")
    print(f"| batch | {' | '.join(f'{n} ms' for n in engines)} | int4 speedup | {' | '.join(f'{n} rel err' for n in engines)} |")
    print("|---|" + "---:|" * (2 * len(engines) + 1))
    for m in batches:
        x = torch.randn(m, a.k, device="cuda")
        ref = (x.double() @ w.cuda().double()).float()
        ctxs = {n: e.create_execution_context() for n, e in engines.items()}
        times = {n: [] for n in engines}
        for _ in range(a.blocks):
            for n, c in ctxs.items():
                times[n].append(time_ms(c, {"x": x}))
        med = {n: float(np.median(t)) for n, t in times.items()}
        err = {n: float((c.infer({"x": x})["y"].float() - ref).norm() / ref.norm()) for n, c in ctxs.items()}
        names = list(engines)
        print(f"| {m} | {' | '.join(f'{med[n]:.4f}' for n in names)} | {med[names[0]] / med[names[1]]:.2f}x | "
              f"{' | '.join(f'{err[n]:.2e}' for n in names)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prototype bench: how fast can an fp8 GEMM with its epilogue fused run on this GPU, against cuBLASLt
(``torch._scaled_mm``) and the fp16 GEMMs Kiln's fp16 engines use? (issue 6: the BERT-base FP8 bar.)

    python benchmarks/bench_fp8_gemm.py [--shapes bert,resnet] [--iters 30]

Kernels (Triton, generated here, fp8 e4m3 operands, fp32 accumulator, A [M, K] and W [N, K] both K-major):
``ptr`` = pointer loads, one program per tile; ``tma`` = tensor-descriptor (TMA) loads, one program per tile;
``tma_p`` = TMA loads, persistent (one program per SM walking the tiles). Epilogues in the accumulator tile:
``f16`` = scale + bias -> fp16; ``gelu_q`` = scale + bias + GELU -> quantized fp8 (the next GEMM's input);
``res`` = scale + bias + residual (fp16) -> fp16. Times: median of CUDA-graph replays (each replay runs the
op 10 times). Every result is checked against float32 on the same fp8 operands first.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from run import graph_replay_ms

SHAPES = {
    "bert": [("qkv", 8192, 768, 2304, "f16"), ("attn_out+res", 8192, 768, 768, "res"),
             ("ffn1+gelu", 8192, 768, 3072, "gelu_q"), ("ffn2+res", 8192, 3072, 768, "res")],
    "bert_epi": [("ffn1 gelu->fp16", 8192, 768, 3072, "gelu_h"), ("ffn1 ->fp8", 8192, 768, 3072, "q"),
                 ("ffn1 ->fp16", 8192, 768, 3072, "f16"), ("ffn1 fastgelu->fp8", 8192, 768, 3072, "gelu_fast_q")],
    "resnet": [("1x1 64->256 56", 256 * 56 * 56, 64, 256, "res"), ("1x1 256->64 56", 256 * 56 * 56, 256, 64, "f16"),
               ("1x1 512->128 28", 256 * 28 * 28, 512, 128, "f16"), ("1x1 128->512 28", 256 * 28 * 28, 128, 512, "res"),
               ("1x1 1024->256 14", 256 * 14 * 14, 1024, 256, "f16"), ("1x1 2048->512 7", 256 * 7 * 7, 2048, 512, "f16")],
}
EPI = {"f16": 0, "gelu_q": 1, "res": 2, "gelu_h": 3, "q": 4, "gelu_fast_q": 5}
FP8_OUT = ("gelu_q", "q", "gelu_fast_q")
KINDS = ["ptr", "tma", "tma_p", "tma_pt", "tma_t", "tma_pt2", "kiln", "kiln16", "kiln_q+"]
CONFIGS = [(128, 128, 128, 8, 8, 4), (128, 256, 128, 8, 8, 3), (128, 128, 64, 8, 4, 4), (64, 128, 128, 8, 4, 4),
           (128, 64, 128, 8, 4, 4), (256, 128, 128, 8, 8, 3), (128, 256, 64, 8, 8, 4),
           (128, 128, 128, 8, 8, 2), (128, 128, 64, 8, 8, 3), (128, 128, 128, 8, 4, 2), (128, 256, 64, 8, 8, 2),
           (64, 256, 128, 8, 4, 2)]


@triton.jit
def _epilogue(acc, rm, rn, M, N, out_ptr, bias_ptr, res_ptr, scale, out_scale, EPI: tl.constexpr):
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    y = acc * scale + tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    offs = rm[:, None].to(tl.int64) * N + rn[None, :]
    if EPI == 1 or EPI == 3:
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    if EPI == 1 or EPI == 4:
        q = tl.minimum(tl.maximum(y * (1.0 / out_scale), -448.0), 448.0)
        tl.store(out_ptr + offs, q.to(tl.float8e4nv), mask=mask)
    else:
        if EPI == 2:
            y += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, y.to(tl.float16), mask=mask)


@triton.jit
def _tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + ((pid % group) % size_m), (pid % group) // size_m


@triton.jit
def k_ptr(a_ptr, w_ptr, out_ptr, bias_ptr, res_ptr, M, N, K, scale, out_scale, EPI: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    ap = a_ptr + rm[:, None].to(tl.int64) * K + rk[None, :]
    wp = w_ptr + rn[:, None] * K + rk[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(ap, mask=rm[:, None] < M, other=0.0)
        w = tl.load(wp, mask=rn[:, None] < N, other=0.0)
        acc = tl.dot(a, w.T, acc)
        ap += BLOCK_K
        wp += BLOCK_K
    _epilogue(acc, rm, rn, M, N, out_ptr, bias_ptr, res_ptr, scale, out_scale, EPI)


@triton.jit
def k_tma(a_desc, w_desc, out_ptr, bias_ptr, res_ptr, M, N, K, scale, out_scale, EPI: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = a_desc.load([pid_m * BLOCK_M, k0])
        w = w_desc.load([pid_n * BLOCK_N, k0])
        acc = tl.dot(a, w.T, acc)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    _epilogue(acc, rm, rn, M, N, out_ptr, bias_ptr, res_ptr, scale, out_scale, EPI)


@triton.jit
def k_tma_p(a_desc, w_desc, out_ptr, bias_ptr, res_ptr, M, N, K, scale, out_scale, EPI: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
            NUM_SMS: tl.constexpr):
    start = tl.program_id(0)
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile in tl.range(start, tiles, NUM_SMS, flatten=True):
        pid_m, pid_n = _tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            a = a_desc.load([pid_m * BLOCK_M, k0])
            w = w_desc.load([pid_n * BLOCK_N, k0])
            acc = tl.dot(a, w.T, acc)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        _epilogue(acc, rm, rn, M, N, out_ptr, bias_ptr, res_ptr, scale, out_scale, EPI)


@triton.jit
def _erf_fast(x):
    """erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): one exp and one reciprocal."""
    a = tl.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    p = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    r = 1.0 - p * tl.exp(-a * a)
    return tl.where(x < 0, -r, r)


@triton.jit
def k_tma_pt(a_desc, w_desc, out_desc, bias_ptr, res_desc, M, N, K, scale, out_scale, EPI: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
             NUM_SMS: tl.constexpr):
    """Persistent (NUM_SMS > 0; else one tile per program), TMA loads and TMA stores."""
    start = tl.program_id(0)
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    step = NUM_SMS if NUM_SMS > 0 else tiles
    for tile in tl.range(start, tiles, step, flatten=True):
        pid_m, pid_n = _tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            a = a_desc.load([pid_m * BLOCK_M, k0])
            w = w_desc.load([pid_n * BLOCK_N, k0])
            acc = tl.dot(a, w.T, acc)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        y = acc * scale + tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
        if EPI == 1 or EPI == 3:
            y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
        if EPI == 5:
            y = 0.5 * y * (1.0 + _erf_fast(y * 0.7071067811865476))
        if EPI == 2:
            y += res_desc.load([pid_m * BLOCK_M, pid_n * BLOCK_N]).to(tl.float32)
        if EPI == 1 or EPI == 4 or EPI == 5:
            q = tl.minimum(tl.maximum(y * (1.0 / out_scale), -448.0), 448.0)
            out_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], q.to(tl.float8e4nv))
        else:
            out_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], y.to(tl.float16))


def kiln_call(kind, cfg, a, w, bias, res, scale, out_scale, epi, x16):
    """Kiln's kernel: ``kiln`` (fp8 X), ``kiln16`` (float16 bias), ``kiln_q+`` (Kiln's quantize pass over the
    float16 X, then the GEMM: what a QLinear with a float input runs)."""
    sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
    from kiln.backends.triton.fp8_gemm import Fp8GemmLaunch
    from kiln.backends.triton.quant import Quantize
    steps = {"f16": [], "res": ["add:4"], "gelu_q": ["gelu"], "gelu_fast_q": ["gelu"], "gelu_h": ["gelu"],
             "q": []}[epi]
    x16_t, sx = x16
    launch = Fp8GemmLaunch(w, torch.tensor([scale], device=a.device), bias.half() if kind == "kiln16" else bias,
                           steps, out_scale if epi in FP8_OUT else None, cfg[:6])
    out_dtype = torch.float8_e4m3fn if epi in FP8_OUT else torch.float16
    residuals = [res] if res is not None else []
    if kind == "kiln_q+":
        quant = Quantize(sx, "fp8e4m3", 0, "q")
        a8 = torch.empty_like(a)
        return lambda: launch(quant(x16_t, a8), residuals, out_dtype)
    return lambda: launch(a, residuals, out_dtype)


def triton_call(kind, cfg, a, w, bias, res, scale, out_scale, epi, x16=None):
    from triton.tools.tensor_descriptor import TensorDescriptor
    if kind.startswith("kiln"):  # the engine's kernel (kiln/backends/triton/fp8_gemm.py) with the same epilogue
        return kiln_call(kind, cfg, a, w, bias, res, scale, out_scale, epi, x16)
    bm, bn, bk, gm, warps, stages = cfg
    M, K = a.shape
    N = w.shape[0]
    out = torch.empty(M, N, device=a.device, dtype=torch.float8_e4m3fn if epi in FP8_OUT else torch.float16)
    res = res if res is not None else out
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    common = dict(EPI=EPI[epi], BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, num_warps=warps, num_stages=stages)
    if kind == "ptr":
        args = (a, w)
    else:
        args = (TensorDescriptor.from_tensor(a, [bm, bk]), TensorDescriptor.from_tensor(w, [bn, bk]))
    if kind in ("tma_pt", "tma_t", "tma_pt2"):
        sms = torch.cuda.get_device_properties(a.device).multi_processor_count if kind != "tma_t" else 0
        sms *= 2 if kind == "tma_pt2" else 1  # two programs per SM: one's epilogue overlaps the other's GEMM
        od = TensorDescriptor.from_tensor(out, [bm, bn])
        rd = TensorDescriptor.from_tensor(res, [bm, bn])

        def run():
            k_tma_pt[(min(sms, tiles) if sms else tiles,)](*args, od, bias, rd, M, N, K, scale, out_scale, NUM_SMS=sms, **common)
            return out
    elif kind == "tma_p":
        sms = torch.cuda.get_device_properties(a.device).multi_processor_count

        def run():
            k_tma_p[(min(sms, tiles),)](*args, out, bias, res, M, N, K, scale, out_scale, NUM_SMS=sms, **common)
            return out
    else:
        kern = k_ptr if kind == "ptr" else k_tma

        def run():
            kern[(tiles,)](*args, out, bias, res, M, N, K, scale, out_scale, **common)
            return out
    return run


def bench(name, M, K, N, epi, iters, rows, configs):
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(M, K, device=dev, generator=g)
    wf = torch.randn(N, K, device=dev, generator=g) / K ** 0.5
    sx, sw, out_scale = float(x.abs().max()) / 448, float(wf.abs().max()) / 448, 0.02
    x16 = (x.half().float().clamp(-448 * sx, 448 * sx)).half()
    a = (x16.float() / sx).to(torch.float8_e4m3fn)
    w = (wf / sw).clamp(-448, 448).to(torch.float8_e4m3fn)
    bias = torch.randn(N, device=dev, generator=g) * 0.1
    res = torch.randn(M, N, device=dev, generator=g).half() if epi == "res" else None
    ref = (a.float() @ w.float().T) * (sx * sw) + bias
    if epi in ("gelu_q", "gelu_h", "gelu_fast_q"):
        ref = F.gelu(ref)
    if res is not None:
        ref = ref + res.float()
    flops = 2.0 * M * N * K

    def check(y):
        y = y.float() * (out_scale if epi in FP8_OUT else 1.0)
        return float((y - ref).norm() / ref.norm())

    def record(impl, fn, cfg="-"):
        try:
            err = check(fn())
            ms = graph_replay_ms(fn, iters)
        except Exception as e:  # noqa: BLE001 - a config that does not compile is a row, not a crash
            rows.append((name, impl, cfg, None, None, f"{type(e).__name__}: {str(e)[:80]}"))
            return
        ok = err < (3e-2 if epi in FP8_OUT else 5e-3)
        rows.append((name, impl, cfg, ms, flops / ms / 1e9, f"err {err:.1e}{'' if ok else ' WRONG'}"))

    # fp16 baselines: what the fp16 engine runs (cuBLAS / cuBLASLt with the GELU epilogue)
    xh, wh, bh = x.half(), wf.half(), bias.half()
    resh = res
    if epi in ("gelu_q", "gelu_h", "gelu_fast_q"):
        fp16 = lambda: torch._addmm_activation(bh, xh, wh.t(), use_gelu=True)  # noqa: E731
    elif epi == "res":
        fp16 = lambda: torch.addmm(resh, xh, wh.t()).add_(bh)  # noqa: E731 (bias+res: two ops, as close as any)
    else:
        fp16 = lambda: torch.addmm(bh, xh, wh.t())  # noqa: E731
    ref16 = ref
    try:
        ms = graph_replay_ms(fp16, iters)
        rows.append((name, "fp16 cublas", "-", ms, flops / ms / 1e9, "(float weights)"))
    except Exception as e:  # noqa: BLE001
        rows.append((name, "fp16 cublas", "-", None, None, str(e)[:80]))
    del ref16
    wt = w.t()
    s_a, s_b = torch.tensor(sx, device=dev), torch.tensor(sw, device=dev)
    for fast in (False, True):
        fn = lambda fast=fast: torch._scaled_mm(a, wt, scale_a=s_a, scale_b=s_b, bias=bias.half(),  # noqa: E731
                                                out_dtype=torch.float16, use_fast_accum=fast)
        if epi == "f16":
            record(f"scaled_mm fast={int(fast)}", fn)
        else:  # the GEMM alone (the epilogue would be another pass): time only
            try:
                ms = graph_replay_ms(fn, iters)
                rows.append((name, f"scaled_mm fast={int(fast)} (no epi)", "-", ms, flops / ms / 1e9, ""))
            except Exception as e:  # noqa: BLE001
                rows.append((name, f"scaled_mm fast={int(fast)}", "-", None, None, str(e)[:80]))
    for kind in KINDS:
        for cfg in configs:
            try:
                call = triton_call(kind, cfg, a, w, bias, res, sx * sw, out_scale, epi, (x16, sx))
            except Exception as e:  # noqa: BLE001 - e.g. a config that does not fit shared memory
                rows.append((name, f"triton {kind}", cfg, None, None, f"{type(e).__name__}: {str(e)[:80]}"))
                continue
            record(f"triton {kind}", call, cfg)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="bert,resnet")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--configs", default="all")
    p.add_argument("--kinds", default=",".join(KINDS))
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    KINDS[:] = args.kinds.split(",")
    configs = CONFIGS if args.configs == "all" else [CONFIGS[int(i)] for i in args.configs.split(",")]
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    rows = []
    for group in args.shapes.split(","):
        for shape in SHAPES[group]:
            bench(*shape, args.iters, rows, configs)
            print(f"done {shape[0]}", flush=True)
    print(f"{'shape':<18}{'impl':<30}{'config':<28}{'ms':>9}{'TFLOP/s':>9}  note")
    for name, impl, cfg, ms, tf, note in rows:
        t = f"{ms:9.4f}{tf:9.0f}" if ms is not None else f"{'-':>9}{'-':>9}"
        print(f"{name:<18}{impl:<30}{str(cfg):<28}{t}  {note}")
    print("\nbest per shape:")
    for shape in dict.fromkeys(r[0] for r in rows):
        ok = [r for r in rows if r[0] == shape and r[3] is not None and "WRONG" not in r[5]]
        base = next((r[3] for r in ok if r[1] == "fp16 cublas"), None)
        best_tr = min((r for r in ok if r[1].startswith("triton")), key=lambda r: r[3], default=None)
        best_sm = min((r for r in ok if r[1].startswith("scaled_mm")), key=lambda r: r[3], default=None)
        line = f"{shape:<18} fp16 {base:.4f}" if base else f"{shape:<18} fp16 -"
        for r in (best_sm, best_tr):
            if r:
                line += f" | {r[1]} {r[2]} {r[3]:.4f} ms ({base / r[3]:.2f}x)" if base else ""
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What it costs to keep NaN through ReLU on the CPU: oneDNN convolution with its ReLU post-op (which turns NaN
into 0) against the convolution followed by an in-place ReLU (what Kiln runs since 2026-12), at ResNet-50's four
stage widths, batch 1. Blocks of 20 calls with a pause at each switch, medians of 7 blocks.

    python benchmarks/bench_onednn_relu.py
"""
import torch, time, statistics
torch.set_num_threads(2)
conv = torch.ops.mkldnn._convolution_pointwise.default
res = []
for (c, hw) in [(64, 56), (128, 28), (256, 14), (512, 7)]:
    x = torch.randn(1, c, hw, hw).to(memory_format=torch.channels_last)
    w = torch.randn(c, c, 3, 3)
    wr = torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 1, list(x.shape))
    b = torch.randn(c)
    post = lambda: conv(x, wr, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
    plain = lambda: conv(x, wr, b, [1, 1], [1, 1], [1, 1], 1, "none", [], "").relu_()
    t = {"post": [], "plain": []}
    for f in (post, plain):
        for _ in range(5): f()
    for rep in range(7):
        for name, f in (("post", post), ("plain", plain)):
            time.sleep(0.05)
            t0 = time.perf_counter()
            for _ in range(20): f()
            t[name].append((time.perf_counter() - t0) / 20 * 1e3)
    p, q = statistics.median(t["post"]), statistics.median(t["plain"])
    print(f"C={c} HW={hw}: post-op relu {p:.3f} ms, conv + relu_ {q:.3f} ms, ratio {q/p:.3f}")

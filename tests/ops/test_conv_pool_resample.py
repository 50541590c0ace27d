"""Conv, pool and resample ops against onnx.reference on random inputs, beyond the ONNX node suite.

Each row: (op, inputs, attrs, extra check_op options). Inputs are built from a seeded generator so a
failure reproduces.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest

from tests.ops.oracle import check_op as _check_op
from tests.ops.oracle import one_node_model

DEVICE = os.environ.get("KILN_TEST_DEVICE", "cpu")
check_op = functools.partial(_check_op, device=DEVICE)

rng = np.random.default_rng(0)


def run_kiln(model, feed):
    import kiln
    out = kiln.interpret(kiln.parse(model), feed, device=DEVICE)["out0"]
    return out.cpu().numpy() if hasattr(out, "cpu") else np.asarray(out)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def f64(*shape):
    return rng.standard_normal(shape)


def f16(*shape):
    return rng.standard_normal(shape).astype(np.float16)


def i64(*values):
    return np.array(values, dtype=np.int64)


def fl(*values):
    return np.array(values, dtype=np.float32)


CONV = [
    ("Conv", dict(X=f32(2, 4, 9), W=f32(6, 2, 3)), dict(group=2, dilations=[2], strides=[2], pads=[1, 3]), {}),
    ("Conv", dict(X=f32(1, 3, 8, 7), W=f32(4, 3, 3, 2), B=f32(4)),
     dict(auto_pad="SAME_LOWER", strides=[2, 3], dilations=[2, 1]), {}),
    ("Conv", dict(X=f32(1, 2, 7, 8), W=f32(3, 2, 3, 3)), dict(auto_pad="SAME_UPPER", strides=[2, 2]), {}),
    ("Conv", dict(X=f32(1, 2, 5, 6, 7), W=f32(2, 2, 2, 3, 2)), dict(auto_pad="VALID", strides=[1, 2, 2]), {}),
    ("Conv", dict(X=f64(1, 4, 6, 6), W=f64(4, 1, 3, 3), B=f64(4)), dict(group=4, pads=[0, 2, 1, 0]), {}),
    ("Conv", dict(X=f16(1, 3, 6, 6), W=f16(2, 3, 3, 3)), dict(pads=[1, 1, 1, 1]), dict(rtol=1e-2, atol=1e-2)),
    # 4 spatial dims: beyond torch's F.conv3d, Kiln's unfolded convolution.
    ("Conv", dict(X=f32(1, 4, 4, 5, 3, 4), W=f32(2, 2, 2, 3, 1, 2), B=f32(2)),
     dict(group=2, strides=[1, 2, 1, 1], dilations=[2, 1, 1, 1], pads=[1, 0, 0, 1, 0, 1, 1, 0]), {}),
    ("ConvTranspose", dict(X=f32(1, 2, 4, 5), W=f32(2, 3, 3, 3), B=f32(3)),
     dict(strides=[2, 2], output_padding=[1, 0], pads=[0, 1, 2, 0]), {}),
    ("ConvTranspose", dict(X=f32(2, 4, 6), W=f32(4, 2, 3)), dict(dilations=[2], strides=[3]), {}),
    ("ConvTranspose", dict(X=f32(1, 1, 3, 3), W=f32(1, 2, 3, 3)),
     dict(strides=[2, 2], output_shape=[8, 7], auto_pad="SAME_LOWER"), {}),
    ("ConvTranspose", dict(X=f32(1, 1, 3, 4), W=f32(1, 2, 2, 2)), dict(strides=[2, 2], auto_pad="SAME_UPPER"), {}),
    ("ConvTranspose", dict(X=f32(1, 2, 3, 3, 2), W=f32(2, 1, 2, 2, 2)), dict(strides=[1, 2, 2]), {}),
    ("DeformConv", dict(X=f32(2, 4, 6, 5), W=f32(6, 2, 2, 3), offset=f32(2, 2 * 6 * 2, 3, 1) * 2, B=f32(6),
                        mask=rng.random((2, 2 * 6, 3, 1)).astype(np.float32)),
     dict(group=2, offset_group=2, strides=[2, 2], pads=[1, 0, 0, 1], dilations=[1, 2]), dict(rtol=1e-4, atol=1e-5)),
    ("DeformConv", dict(X=f32(1, 2, 5, 5), W=f32(3, 2, 3, 3), offset=f32(1, 18, 5, 5) * 3),
     dict(pads=[1, 1, 1, 1]), dict(rtol=1e-4, atol=1e-5)),
    ("Col2Im", dict(x=f32(2, 2 * 4, 18), image=i64(5, 6), block=i64(2, 2)),
     dict(pads=[1, 0, 0, 1], strides=[2, 1]), dict(const_inputs=("image", "block"))),
    ("Col2Im", dict(x=f32(1, 3 * 8, 12), image=i64(5, 5, 4), block=i64(2, 2, 2)),
     dict(strides=[2, 2, 1], dilations=[1, 2, 1]), dict(const_inputs=("image", "block"))),
    ("CausalConvWithState", dict(x=f32(2, 3, 5), w=f32(3, 1, 4), b=f32(3), past=f32(2, 3, 3)),
     dict(activation="silu"), dict(n_outputs=2, opset=27)),
    ("CausalConvWithState", dict(x=f32(1, 2, 1), w=f32(2, 1, 3)), {}, dict(n_outputs=2, opset=27)),
]

POOL = [
    ("MaxPool", dict(X=f32(1, 2, 7, 6)), dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 2, 1], ceil_mode=1),
     dict(n_outputs=2)),
    # Strides other than 1 keep onnx.reference on its MaxPool path that computes Indices correctly.
    ("MaxPool", dict(X=f32(2, 1, 5, 6)), dict(kernel_shape=[2, 3], storage_order=1, pads=[0, 1, 1, 0], strides=[1, 2]),
     dict(n_outputs=2)),
    ("MaxPool", dict(X=f32(1, 2, 6, 5, 7)), dict(kernel_shape=[2, 2, 3], dilations=[2, 1, 2], strides=[1, 2, 1]),
     dict(n_outputs=2)),
    ("MaxPool", dict(X=rng.integers(-100, 100, (1, 3, 9), dtype=np.int8)),
     dict(kernel_shape=[3], strides=[2], ceil_mode=1, dilations=[2]), {}),
    ("MaxPool", dict(X=f64(1, 1, 7, 6)), dict(kernel_shape=[3, 2], auto_pad="SAME_LOWER"), {}),
    ("AveragePool", dict(X=f32(1, 2, 7, 6)),
     dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 2, 1], ceil_mode=1, count_include_pad=1), {}),
    ("AveragePool", dict(X=f32(1, 2, 7, 6)), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 2, 1], ceil_mode=1),
     {}),
    ("AveragePool", dict(X=f32(1, 1, 8, 9)), dict(kernel_shape=[2, 3], dilations=[2, 2], pads=[1, 1, 1, 1]), {}),
    ("AveragePool", dict(X=f16(1, 2, 6, 6)), dict(kernel_shape=[2, 2], strides=[2, 2]), dict(rtol=1e-3, atol=1e-3)),
    ("AveragePool", dict(X=f32(2, 3, 10)), dict(kernel_shape=[4], strides=[3], auto_pad="SAME_UPPER",
                                                 count_include_pad=1), {}),
    ("LpPool", dict(X=f32(1, 2, 6, 7)), dict(kernel_shape=[2, 3], p=3, strides=[2, 1], pads=[1, 0, 0, 1]),
     dict(rtol=1e-4)),
    ("LpPool", dict(X=f32(1, 2, 9)), dict(kernel_shape=[3], p=1, strides=[2], auto_pad="SAME_UPPER"), {}),
    ("GlobalMaxPool", dict(X=f64(2, 3, 4, 5)), {}, {}),
    ("GlobalAveragePool", dict(X=f16(2, 3, 4, 5)), {}, dict(rtol=1e-3, atol=1e-3)),
    ("MaxUnpool", dict(X=f32(1, 2, 2, 3), I=i64(*rng.permutation(2 * 4 * 5)[:12]).reshape(1, 2, 2, 3)),
     dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 1]), {}),
]

RESIZE = [
    # (inputs, attrs, extras) for Resize at opset 19 unless extras say otherwise
    (dict(X=f32(1, 2, 4, 5), roi=None, scales=fl(1, 1, 1.7, 0.6)),
     dict(mode="nearest", coordinate_transformation_mode=ctm, nearest_mode=nm), {})
    for ctm in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric")
    for nm in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
] + [
    (dict(X=f32(1, 2, 6, 7), roi=None, scales=None, sizes=i64(1, 2, 3, 11)),
     dict(mode="linear", coordinate_transformation_mode=ctm), {})
    for ctm in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric")
] + [
    (dict(X=f32(1, 1, 6, 7), roi=None, scales=fl(1, 1, 0.5, 1.7)),
     dict(mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1, coordinate_transformation_mode="half_pixel_symmetric"),
     {}),
    (dict(X=f32(1, 1, 9, 11), roi=None, scales=None, sizes=i64(4, 5)),
     dict(mode="cubic", antialias=1, axes=[2, 3]), {}),
    (dict(X=f32(2, 9, 11), roi=None, scales=fl(0.4, 0.3)),
     dict(mode="linear", antialias=1, axes=[2, 1]), {}),
    (dict(X=f32(1, 6, 6, 2), roi=fl(0.2, 0.1, 0.9, 1.2), scales=None, sizes=i64(5, 4)),
     dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-3.0, axes=[1, 2]),
     {}),
    (dict(X=f32(1, 1, 5, 7), roi=fl(0, 0, -0.2, 0.3, 1, 1, 0.7, 1.1), scales=fl(1, 1, 1.3, 0.8)),
     dict(mode="nearest", coordinate_transformation_mode="tf_crop_and_resize"), {}),
    (dict(X=f32(1, 1, 4, 6), roi=None, scales=None, sizes=i64(7, 7)),
     dict(mode="nearest", axes=[2, 3], keep_aspect_ratio_policy="not_larger"), {}),
    (dict(X=f32(1, 1, 4, 6), roi=None, scales=None, sizes=i64(7, 7)),
     dict(mode="linear", axes=[2, 3], keep_aspect_ratio_policy="not_smaller"), {}),
    (dict(X=rng.integers(0, 255, (1, 3, 5, 5), dtype=np.uint8), roi=None, scales=fl(1, 1, 1.6, 2.2)),
     dict(mode="linear"), {}),
    (dict(X=f32(1, 2, 3, 4, 5), roi=None, scales=fl(1, 1, 2, 0.5, 1.4)), dict(mode="linear"), {}),
    (dict(X=f64(1, 2, 4, 4), roi=None, scales=None, sizes=i64(1, 2, 1, 6)),
     dict(mode="cubic", coordinate_transformation_mode="pytorch_half_pixel"), {}),
    (dict(X=i64(*range(12)).reshape(1, 1, 3, 4), roi=None, scales=fl(1, 1, 2.5, 0.5)), dict(mode="nearest"), {}),
]

GRID = [
    (dict(X=f32(2, 3, 5, 6), grid=rng.uniform(-1.3, 1.3, (2, 4, 3, 2)).astype(np.float32)),
     dict(mode=mode, padding_mode=pm, align_corners=ac), {})
    for mode in ("linear", "nearest", "cubic")
    for pm in ("zeros", "border", "reflection")
    for ac in (0, 1)
] + [
    (dict(X=f32(1, 2, 3, 4, 5), grid=rng.uniform(-1.2, 1.2, (1, 2, 3, 2, 3)).astype(np.float32)),
     dict(mode=mode, padding_mode="reflection", align_corners=0), {})
    for mode in ("linear", "nearest")
] + [
    (dict(X=f32(1, 2, 4, 5), grid=rng.uniform(-2.5, 2.5, (1, 6, 7, 2)).astype(np.float32)),
     dict(mode="cubic", padding_mode=pm, align_corners=ac), {})
    for pm in ("border", "reflection")
    for ac in (0, 1)
] + [
    # Shapes torch's grid_sample lacks: 1-D and 3-D cubic go through Kiln's own N-D sampler.
    (dict(X=f32(2, 3, 7), grid=rng.uniform(-1.4, 1.4, (2, 5, 1)).astype(np.float32)),
     dict(mode=mode, padding_mode=pm, align_corners=1), {})
    for mode in ("linear", "nearest", "cubic")
    for pm in ("zeros", "border", "reflection")
] + [
    (dict(X=f32(1, 2, 3, 4, 5), grid=rng.uniform(-1.3, 1.3, (1, 2, 2, 3, 3)).astype(np.float32)),
     dict(mode="cubic", padding_mode=pm, align_corners=0), {})
    for pm in ("zeros", "border", "reflection")
]

ROI = [
    dict(mode="avg", output_height=3, output_width=2, sampling_ratio=0, spatial_scale=0.5),
    dict(mode="avg", output_height=2, output_width=4, sampling_ratio=2, coordinate_transformation_mode="output_half_pixel"),
    dict(mode="max", output_height=3, output_width=3, sampling_ratio=0, spatial_scale=0.7),
]


@pytest.mark.parametrize("op, inputs, attrs, extra", CONV + POOL,
                         ids=[f"{r[0]}{i}" for i, r in enumerate(CONV + POOL)])
def test_conv_pool(op, inputs, attrs, extra):
    extra = dict(extra)
    extra.setdefault("rtol", 1e-4)
    extra.setdefault("atol", 1e-5)
    check_op(op, inputs, attrs, **extra)


@pytest.mark.parametrize("inputs, attrs, extra", RESIZE)
def test_resize(inputs, attrs, extra):
    check_op("Resize", inputs, attrs, opset=extra.get("opset", 19), rtol=1e-4, atol=1e-5)


def test_resize_opset10_and_upsample():
    x = f32(1, 2, 3, 4)
    check_op("Upsample", dict(X=x, scales=fl(1, 1, 2, 3)), dict(mode="nearest"), opset=9)
    # onnx.reference has no Resize-10; it behaves as Upsample-9 (asymmetric coordinates).
    model = one_node_model("Resize", dict(X=x, scales=fl(1, 1, 2, 3)), dict(mode="nearest"), opset=10)
    got = run_kiln(model, dict(X=x, scales=fl(1, 1, 2, 3)))
    np.testing.assert_array_equal(got, x.repeat(2, axis=2).repeat(3, axis=3))


@pytest.mark.parametrize("inputs, attrs, extra", GRID)
def test_grid_sample(inputs, attrs, extra):
    check_op("GridSample", inputs, attrs, opset=22, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_nd_matches_torch_path(mode, padding_mode, align_corners):
    """Kiln's N-D sampler against the torch-backed 2-D path, on points inside, near and far outside."""
    import torch

    from kiln.ops.registry import KernelContext
    from kiln.ops.resample import grid_sample
    from kiln.ops.resample_grid import grid_sample_nd
    x = torch.from_numpy(f64(2, 3, 5, 6))
    grid = torch.from_numpy(rng.uniform(-2.5, 2.5, (2, 7, 4, 2)))
    attrs = dict(mode=mode, padding_mode=padding_mode, align_corners=int(align_corners))
    want = grid_sample(KernelContext(opset=22, device=x.device), [x, grid], attrs)
    got = grid_sample_nd(x, grid, mode, padding_mode, align_corners)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("align_corners", [0, 1])
def test_affine_grid(align_corners):
    check_op("AffineGrid", dict(theta=f32(2, 2, 3), size=i64(2, 3, 4, 5)), dict(align_corners=align_corners),
             opset=20, const_inputs=("size",), rtol=1e-5, atol=1e-6)
    check_op("AffineGrid", dict(theta=f32(1, 3, 4), size=i64(1, 1, 3, 4, 2)), dict(align_corners=align_corners),
             opset=20, const_inputs=("size",), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attrs", ROI)
def test_roi_align(attrs):
    rois = np.array([[0, 0, 9, 7], [1.5, 2.2, 4.1, 12.5], [3, 1, 3.5, 2], [-2, -1, 20, 16]], dtype=np.float32)
    check_op("RoiAlign", dict(X=f32(2, 3, 10, 12), rois=rois, batch_indices=i64(0, 1, 1, 0)), attrs, opset=22,
             rtol=1e-4, atol=1e-5)


def _max_roi_pool_loops(x, rois, pooled, scale):
    """Straightforward Caffe RoI pooling, as the oracle (onnx.reference has no MaxRoiPool)."""
    ph, pw = pooled
    out = np.zeros((len(rois), x.shape[1], ph, pw), dtype=x.dtype)
    h, w = x.shape[2:]
    rnd = lambda v: int(np.floor(v + 0.5)) if v >= 0 else -int(np.floor(-v + 0.5))  # noqa: E731
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        sw, sh, ew, eh = rnd(x1 * scale), rnd(y1 * scale), rnd(x2 * scale), rnd(y2 * scale)
        bh, bw = max(eh - sh + 1, 1) / ph, max(ew - sw + 1, 1) / pw
        for i in range(ph):
            for j in range(pw):
                hs = min(max(int(np.floor(i * bh)) + sh, 0), h)
                he = min(max(int(np.ceil((i + 1) * bh)) + sh, 0), h)
                ws = min(max(int(np.floor(j * bw)) + sw, 0), w)
                we = min(max(int(np.ceil((j + 1) * bw)) + sw, 0), w)
                if he > hs and we > ws:
                    out[r, :, i, j] = x[int(b), :, hs:he, ws:we].max(axis=(1, 2))
    return out


def test_max_roi_pool():
    x = f32(2, 3, 9, 11)
    rois = np.array([[0, 0, 0, 8, 6], [1, 2.5, 1, 9, 9], [1, 20, 20, 30, 30], [0, -3, 2, 4, 3]], dtype=np.float32)
    model = one_node_model("MaxRoiPool", dict(X=x, rois=rois), dict(pooled_shape=[3, 2], spatial_scale=0.9), opset=22)
    got = run_kiln(model, dict(X=x, rois=rois))
    np.testing.assert_allclose(got, _max_roi_pool_loops(x, rois, (3, 2), 0.9))


def test_global_lp_pool():
    x = f32(2, 3, 4, 5)
    model = one_node_model("GlobalLpPool", dict(X=x), dict(p=3), opset=22)
    got = run_kiln(model, dict(X=x))
    want = (np.abs(x.astype(np.float64)) ** 3).sum(axis=(2, 3), keepdims=True) ** (1 / 3)
    np.testing.assert_allclose(got, want, rtol=1e-5)

"""Calibrators on known distributions, the calibration cache formats, and the data sources."""
import json

import numpy as np
import pytest
import torch

from kiln.quant import Calibration, HistogramObserver, compute_amax
from kiln.quant.data import iter_batches

g = torch.Generator().manual_seed(0)


def observed(x: torch.Tensor, batches: int = 4) -> HistogramObserver:
    o = HistogramObserver()
    for part in x.chunk(batches):
        o.observe(part)
    return o


def test_minmax_is_the_largest_magnitude():
    x = torch.randn(10000, generator=g)
    assert compute_amax(observed(x), "minmax") == pytest.approx(float(x.abs().max()))


def test_percentile_of_uniform():
    x = torch.rand(200000, generator=g) * 2 - 1
    assert compute_amax(observed(x), "percentile:90") == pytest.approx(0.9, abs=0.01)
    assert compute_amax(observed(x), "percentile") == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("method", ["entropy", "entropy2"])
def test_entropy_clips_a_dense_tail(method):
    with torch.random.fork_rng():  # a fixed sample: the global generator's state depends on the tests before
        torch.manual_seed(0)
        x = torch.distributions.Laplace(0.0, 1.0).sample((400000,))
    amax = compute_amax(observed(x), method)
    assert 4 < amax < 0.95 * float(x.abs().max()), amax


def test_entropy2_clips_sparse_outliers():
    # A Gaussian body with a few huge outliers: the smoothed KL threshold stays near the body. (The legacy
    # unsmoothed search cannot: every candidate whose last bin is empty has infinite divergence.)
    x = torch.cat([torch.randn(200000, generator=g), torch.tensor([80.0, -90.0, 100.0])])
    amax = compute_amax(observed(x), "entropy2")
    assert 2.5 < amax < 20, amax


def test_entropy2_ignores_relu_zeros():
    x = torch.randn(200000, generator=g).relu()
    assert compute_amax(observed(x), "entropy2") > 0.8 * float(x.max()) * 0.7


def test_histogram_grows_with_later_batches():
    o = HistogramObserver()
    o.observe(torch.tensor([0.5, 1.0]))
    o.observe(torch.tensor([3.0]))
    assert o.amax == 3.0 and o.counts.sum() == 3 and len(o.counts) * o.width >= 3.0


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown calibration method"):
        compute_amax(observed(torch.ones(4)), "kl")


@pytest.mark.parametrize("suffix", [".json", ".cache"])
def test_cache_round_trip(tmp_path, suffix):
    cal = Calibration({"x": 0.0123, "/layer/Relu_output_0": 1.5e-3}, "entropy2")
    p = tmp_path / f"calib{suffix}"
    cal.save(p)
    back = Calibration.load(p)
    assert back.method == "entropy2"
    assert back.scales.keys() == cal.scales.keys()
    for k in cal.scales:
        assert back.scales[k] == pytest.approx(cal.scales[k], rel=1e-7)
    text = p.read_text()
    if suffix == ".json":
        assert json.loads(text)["format"] == "kiln-calibration"
    else:
        assert text.startswith("TRT-") and "EntropyCalibration2" in text.splitlines()[0]


def test_trt_cache_reads_tensorrt_hex_format(tmp_path):
    p = tmp_path / "trt.cache"
    p.write_text("TRT-8601-MinMaxCalibration\ninput: 3c010a14\nconv1: 3d4ccccd\n")
    cal = Calibration.load(p)
    assert cal.method == "minmax"
    assert cal.scales["conv1"] == pytest.approx(0.05)
    assert cal.scales["input"] == pytest.approx(0.0078759, rel=1e-5)


def test_data_from_folder_iterable_and_calibrator(tmp_path):
    a = [np.full((2, 3), i, np.float32) for i in range(3)]
    for i, x in enumerate(a):
        np.savez(tmp_path / f"b{i}.npz", x=x, m=x + 1)
    got = list(iter_batches(tmp_path, ["x", "m"]))
    assert len(got) == 3 and np.array_equal(got[2]["m"], a[2] + 1)
    npy = tmp_path / "npy"
    npy.mkdir()
    for i, x in enumerate(a):
        np.save(npy / f"{i}.npy", x)
    assert [b["x"][0, 0] for b in iter_batches(npy, ["x"])] == [0, 1, 2]
    assert len(list(iter_batches(iter(a), ["x"], limit=2))) == 2
    assert list(iter_batches([(a[0], a[1])], ["p", "q"]))[0]["q"][0, 0] == 1

    class Cal:  # TensorRT style: host addresses, shapes from the build
        def __init__(self):
            self.left = [np.arange(6, dtype=np.float32).reshape(2, 3)]

        def get_batch_size(self):
            return 2

        def get_batch(self, names):
            if not self.left:
                return None
            self.keep = self.left.pop()
            return [self.keep.ctypes.data]

    got = list(iter_batches(Cal(), ["x"], shapes={"x": ("batch", 3)}))
    assert torch.equal(got[0]["x"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    with pytest.raises(ValueError, match="lacks input"):
        list(iter_batches([{"y": a[0]}], ["x"]))

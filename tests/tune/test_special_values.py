"""The tuner's correctness check plants NaN and Inf in float activations: a tactic that drops them loses."""
import torch

from kiln.tune.tuner import InputSpec, mismatch, with_special_values


def _spec(x, const=False):
    return InputSpec(tuple(x.shape), x.dtype, False, x if const else None)


def test_special_values_planted_in_activations_only():
    x, w, idx = torch.randn(2, 3, 4), torch.randn(4, 4), torch.arange(3)
    out = with_special_values([x, w, idx], [_spec(x), _spec(w, const=True), _spec(idx)])
    assert out[1] is w and out[2] is idx
    flat = out[0].reshape(-1)
    assert flat[0].isnan() and flat[12] == float("inf") and flat[-1] == float("-inf")
    assert torch.isfinite(x).all(), "the random inputs are left as they were"


def test_channels_last_input_gets_its_values():
    x = torch.randn(1, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    (y,) = with_special_values([x], [InputSpec(tuple(x.shape), x.dtype, True, None)])
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert int(torch.isnan(y).sum()) == 1 and int(torch.isinf(y).sum()) == 2


def test_nan_dropping_relu_is_a_mismatch():
    x = torch.randn(64)
    (special,) = with_special_values([x], [_spec(x)])
    ref = torch.relu(special)
    dropping = torch.where(special > 0, special, torch.zeros(()))  # max(x, 0) as a post-op computes it
    assert mismatch(ref, ref, torch.device("cpu"), False) is None
    assert "NaN" in mismatch(dropping, ref, torch.device("cpu"), False)


def test_no_float_activation_means_no_check():
    idx = torch.arange(5)
    assert with_special_values([idx], [_spec(idx)]) is None

"""The fused-layer records of kiln/ops/fused_steps.py: text round trips, malformed text refused with a KilnError,
and each step's torch meaning against a plain reference, NaN and infinities included."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kiln.errors import FusedStepError, KilnError
from kiln.ops.fused_steps import (STEP_NAMES, Activation, AddInput, AddQuantized, Cast, Instr, MulInput, Scale,
                                  apply_epilogue, decode_attrs, encode_attr, inp, parse_epilogue, parse_program,
                                  parse_step, parse_stored_step, tmp)

# one row per step kind: its text, its record
STEPS = [
    ("relu", Activation("relu")), ("sigmoid", Activation("sigmoid")), ("tanh", Activation("tanh")),
    ("gelu", Activation("gelu")), ("gelu_tanh", Activation("gelu_tanh")), ("silu", Activation("silu")),
    ("hardswish", Activation("hardswish")), ("softplus", Activation("softplus")), ("mish", Activation("mish")),
    ("leaky_relu:0.01", Activation("leaky_relu", (0.01,))), ("elu:1.0", Activation("elu", (1.0,))),
    ("clip:0.0:6.0", Activation("clip", (0.0, 6.0))), ("clip::6.0", Activation("clip", (None, 6.0))),
    ("clip:-1.5:", Activation("clip", (-1.5, None))),
    ("hardsigmoid:0.2:0.5", Activation("hardsigmoid", (0.2, 0.5))),
    ("add:3", AddInput(3)), ("mul:2", MulInput(2)), ("addq:3:0.0625", AddQuantized(3, 0.0625)),
    ("scale:0.125", Scale(0.125)), ("cast:10", Cast(10)),
]


@pytest.mark.parametrize("text, record", STEPS, ids=[t for t, _ in STEPS])
def test_step_text_round_trips(text, record):
    assert parse_step(text) == record
    assert record.to_json() == text


def test_every_step_name_has_a_row():
    assert {t.partition(":")[0] for t, _ in STEPS} == set(STEP_NAMES)


@pytest.mark.parametrize("text", ["bogus", "leaky_relu", "relu:", "clip:a:b", "add:", "add:x", "add:1:2", "addq:3",
                                  "elu:1.0:2.0", "hardsigmoid:0.2", "cast:99", "cast:", "mul:-1", "add:12345",
                                  " relu", "relu ", "leaky_relu:1_0", "elu:infinity", "", 3, None, ["relu"]])
def test_malformed_steps_are_refused_with_a_kiln_error(text):
    with pytest.raises(FusedStepError) as e:
        parse_step(text)
    assert isinstance(e.value, KilnError)


def test_engine_files_hold_only_the_steps_passes_store():
    assert parse_stored_step("add:3") == AddInput(3)
    for text in ("scale:0.5", "cast:10"):
        parse_step(text)
        with pytest.raises(FusedStepError):
            parse_stored_step(text)


def test_old_spellings_still_parse():
    """Texts the passes never wrote but older validators accepted (they may sit in engine files)."""
    assert parse_step("leaky_relu:1e-2") == Activation("leaky_relu", (0.01,))
    assert parse_step("clip:-inf:inf") == Activation("clip", (-math.inf, math.inf))
    assert parse_step("add:03") == AddInput(3)


def test_parse_is_cached_per_description():
    steps = ["add:3", "relu"]
    assert parse_epilogue(steps) is parse_epilogue(list(steps))
    assert parse_epilogue([]) == ()


# -- torch meaning ---------------------------------------------------------------------------------------------------
def _reference(y: torch.Tensor, text: str, inputs: list) -> torch.Tensor:
    """Each step written out with out-of-place torch ops (what the stored text has always meant)."""
    name, *p = text.split(":")
    f = float
    table = {
        "relu": lambda: torch.relu(y), "sigmoid": lambda: torch.sigmoid(y), "tanh": lambda: torch.tanh(y),
        "gelu": lambda: F.gelu(y), "gelu_tanh": lambda: F.gelu(y, approximate="tanh"), "silu": lambda: F.silu(y),
        "hardswish": lambda: F.hardswish(y), "softplus": lambda: F.softplus(y), "mish": lambda: F.mish(y),
        "leaky_relu": lambda: F.leaky_relu(y, f(p[0])), "elu": lambda: F.elu(y, f(p[0])),
        "clip": lambda: torch.clamp(y, None if p[0] == "" else f(p[0]), None if p[1] == "" else f(p[1])),
        "hardsigmoid": lambda: torch.clamp(y * f(p[0]) + f(p[1]), 0, 1),
        "add": lambda: y + inputs[int(p[0])], "mul": lambda: y * inputs[int(p[0])],
        "addq": lambda: y + inputs[int(p[0])].to(torch.float32) * f(p[1]),
        "scale": lambda: y * f(p[0]), "cast": lambda: y.to(torch.float16),
    }
    return table[name]()


@pytest.mark.parametrize("text", [t for t, _ in STEPS])
def test_apply_matches_the_reference_with_nan_and_inf(text):
    special = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e30, -1e30])
    y = torch.cat([torch.linspace(-8, 8, 41), special]).reshape(4, 12)
    other = torch.cat([torch.randn(41, generator=torch.Generator().manual_seed(1)), special]).reshape(4, 12)
    codes = torch.arange(-24, 24, dtype=torch.int8).reshape(4, 12)
    inputs = [None, None, other, codes if text.startswith("addq") else other]
    want = _reference(y.clone(), text, inputs)
    got = apply_epilogue(y.clone(), [text], inputs)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)


def test_apply_runs_steps_in_order_in_place():
    y = torch.tensor([-2.0, 0.5, 3.0])
    r = torch.tensor([1.0, 1.0, 1.0])
    out = apply_epilogue(y, ["add:1", "relu", "clip::2.0"], [None, r])
    assert out is y
    assert out.tolist() == [0.0, 1.5, 2.0]


def test_labels_name_each_step_for_the_report():
    assert [parse_step(t).label for t in ("add:3", "relu", "clip::6.0", "mul:2", "addq:3:0.5")] == \
        ["residual", "relu", "clip", "mul", "addq"]


# -- elementwise programs --------------------------------------------------------------------------------------------
def test_program_lines_round_trip():
    for line in ["Add(i0,i1)", "Relu(t0)", "Where(t9,t8,i0)", "RandomNormal()"]:
        assert Instr.from_json(line).to_json() == line
    assert Instr.from_json("Add(t1,i2)") == Instr("Add", (tmp(1), inp(2)))


@pytest.mark.parametrize("line", ["Add(i0,)", "Add(x0)", "Add i0", "(i0)", "Add(i0,i1", "Add(i0) ", "1Add(i0)",
                                  "Add(i12345)", "", 7])
def test_malformed_program_lines_are_refused(line):
    with pytest.raises(FusedStepError):
        Instr.from_json(line)


def test_program_attributes_round_trip():
    items = [encode_attr("alpha", 0.7), encode_attr("to", 10), encode_attr("approximate", "tanh")]
    assert items == ["alpha=f:0.7", "to=i:10", "approximate=s:tanh"]
    assert decode_attrs(items) == {"alpha": 0.7, "to": 10, "approximate": "tanh"}
    for bad in ("alpha", "alpha=x:1", "to=i:1.5", "=i:1", 5):
        with pytest.raises(FusedStepError):
            decode_attrs([bad])


def test_parse_program_pairs_lines_with_their_attributes():
    lines = parse_program(["Gelu(i0)", "Add(t0,i1)"], [["approximate=s:tanh"]])
    assert lines == ((Instr("Gelu", (inp(0),)), {"approximate": "tanh"}), (Instr("Add", (tmp(0), inp(1))), {}))


def test_epilogue_programs_for_the_triton_backend():
    """Each step's ONNX lines, as the Triton backend has always generated them."""
    from kiln.backends.triton.epilogue import epilogue_program
    prog, attrs, operands = epilogue_program(["relu", "add:3", "addq:4:0.5", "clip::6.0", "scale:2.0", "cast:10",
                                              "gelu_tanh", "hardsigmoid:0.2:0.5"], True)
    assert [line.to_json() for line in prog] == [
        "Add(i0,i1)", "Relu(t0)", "Add(t1,i2)", "Mul(i3,i4)", "Add(t2,t3)", "Clip(t4)", "Mul(t5,i5)", "Cast(t6)",
        "Gelu(t7)", "HardSigmoid(t8)"]
    assert attrs == [{}, {}, {}, {}, {}, {"max": 6.0}, {}, {"to": 10}, {"approximate": "tanh"},
                     {"alpha": 0.2, "beta": 0.5}]
    assert operands == ["y", "bias", 3, 4, ("const", 0.5), ("const", 2.0)]

"""The enums of TensorRT 10's network-definition API, with the values of NvInfer.h (NVIDIA/TensorRT v10.16,
``k`` prefix dropped), so code that stores or compares them keeps working; tests/engine/test_trt_network.py
pins them."""
from __future__ import annotations

import enum


class ActivationType(enum.IntEnum):
    """The function of an IActivationLayer. alpha and beta: LEAKY_RELU slope ``alpha`` below 0; ELU ``alpha`` scale
    below 0; SELU ``alpha`` and scale ``beta``; SOFTPLUS ``alpha * log(1 + exp(beta * x))``; CLIP to
    [alpha, beta]; HARD_SIGMOID ``max(0, min(1, alpha * x + beta))``; SCALED_TANH ``alpha * tanh(beta * x)``;
    THRESHOLDED_RELU x where x > alpha, else 0; GELU_ERF and GELU_TANH the exact and tanh-approximated GELU."""

    RELU = 0
    SIGMOID = 1
    TANH = 2
    LEAKY_RELU = 3
    ELU = 4
    SELU = 5
    SOFTSIGN = 6
    SOFTPLUS = 7
    CLIP = 8
    HARD_SIGMOID = 9
    SCALED_TANH = 10
    THRESHOLDED_RELU = 11
    GELU_ERF = 12
    GELU_TANH = 13


class PoolingType(enum.IntEnum):
    """The reduction of an IPoolingLayer: MAX or AVERAGE. Kiln refuses MAX_AVERAGE_BLEND."""

    MAX = 0
    AVERAGE = 1
    MAX_AVERAGE_BLEND = 2


class ScaleMode(enum.IntEnum):
    """How many values an IScaleLayer's weights hold: one for the tensor (UNIFORM), one per channel (CHANNEL), or
    one per element of the dims from the channel axis on (ELEMENTWISE)."""

    UNIFORM = 0
    CHANNEL = 1
    ELEMENTWISE = 2


class ElementWiseOperation(enum.IntEnum):
    """The operation of an IElementWiseLayer: arithmetic (SUM, PROD, MAX, MIN, SUB, DIV, POW, FLOOR_DIV), logic on
    booleans (AND, OR, XOR) and comparisons giving booleans (EQUAL, GREATER, LESS)."""

    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    SUB = 4
    DIV = 5
    POW = 6
    FLOOR_DIV = 7
    AND = 8
    OR = 9
    XOR = 10
    EQUAL = 11
    GREATER = 12
    LESS = 13


class GatherMode(enum.IntEnum):
    """How an IGatherLayer reads its indices: DEFAULT (ONNX Gather along an axis), ELEMENT (GatherElements) or ND
    (GatherND)."""

    DEFAULT = 0
    ELEMENT = 1
    ND = 2


class UnaryOperation(enum.IntEnum):
    """The elementwise function of an IUnaryLayer (EXP, LOG, SQRT, RECIP for 1/x, ABS, NEG, trigonometric and
    hyperbolic functions and their inverses, CEIL, FLOOR, ERF, NOT, SIGN, ROUND, ISINF, ISNAN)."""

    EXP = 0
    LOG = 1
    SQRT = 2
    RECIP = 3
    ABS = 4
    NEG = 5
    SIN = 6
    COS = 7
    TAN = 8
    SINH = 9
    COSH = 10
    ASIN = 11
    ACOS = 12
    ATAN = 13
    ASINH = 14
    ACOSH = 15
    ATANH = 16
    CEIL = 17
    FLOOR = 18
    ERF = 19
    NOT = 20
    SIGN = 21
    ROUND = 22
    ISINF = 23
    ISNAN = 24


class ReduceOperation(enum.IntEnum):
    """The reduction of an IReduceLayer: SUM, PROD, MAX, MIN or AVG (mean). NONE is refused by ``add_reduce``."""

    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    AVG = 4
    NONE = 5  # TensorRT's "no reduction", for collective operations; refused by add_reduce


class MatrixOperation(enum.IntEnum):
    """How an IMatrixMultiplyLayer uses an input: NONE (as is), TRANSPOSE (its last two dims swapped) or VECTOR (its
    last dim is a vector, the dims before it a batch)."""

    NONE = 0
    TRANSPOSE = 1
    VECTOR = 2

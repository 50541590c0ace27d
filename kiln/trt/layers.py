"""TensorRT's layers (IConvolutionLayer, IActivationLayer, ...) as records of their settings, each with an
``emit`` that writes the equivalent standard ONNX nodes into a kiln Graph.

A layer's settings may change after ``add_*`` (``conv.stride_nd = (2, 2)``, as TensorRT's samples do), so the
network writes its Graph from the layers when it is asked for one (kiln/trt/network.py), never node by node.
"""
from __future__ import annotations

import enum

import numpy as np
import torch

from .. import errors
from ..ir.dtype import DType
from ..ir.graph import Graph, Node, Value, new_constant
from ..ir.types import TensorType
from .layer_enums import (ActivationType, ElementWiseOperation, GatherMode, MatrixOperation, PoolingType,
                          ReduceOperation, ScaleMode, UnaryOperation)
from .types import DataType, Dims, _TO_KILN

# TensorRT layer precision -> Kiln's layer_precisions value (kiln/quant/layer_precision.py)
PRECISION_NAMES = {DataType.FLOAT: "fp32", DataType.HALF: "fp16", DataType.BF16: "bf16", DataType.INT8: "int8",
                   DataType.FP8: "fp8"}


class Emitter:
    """Writes one layer's nodes: the first named after the layer (so layer_precisions and the build report find
    it by the layer's name), the others ``name/1``, ``name/2``, ..."""

    def __init__(self, graph: Graph, layer: "ILayer", shape_of):
        self.graph, self.layer, self._shape_of = graph, layer, shape_of
        self.nodes: list[Node] = []

    def _name(self) -> str:
        return self.layer.name if not self.nodes else f"{self.layer.name}/{len(self.nodes)}"

    def const(self, array, hint: str) -> Value:
        return new_constant(self.graph, f"{self.layer.name}/{hint}", torch.from_numpy(np.ascontiguousarray(array)))

    def ints(self, values, hint: str) -> Value:
        return self.const(np.asarray(list(values), np.int64), hint)

    def op(self, op_type: str, inputs: list, **attrs) -> Value:
        name = self._name()
        out = Value(f"{name}:out")
        self.nodes.append(self.graph.append(Node(op_type, inputs, [out], attrs, name=name)))
        return out

    def shape(self, value: Value) -> tuple:
        """The value's shape (symbolic dims as strings), from the nodes written so far."""
        shape = self._shape_of(value)
        if shape is None:
            raise errors.ShapeError(f"layer {self.layer.name!r}: the shape of its input {value.name!r} is unknown")
        return tuple(shape)


def _array(weights, what: str) -> np.ndarray | None:
    """A numpy array from kiln.trt.Weights, numpy, torch or a list; None for absent or empty weights."""
    if weights is None:
        return None
    a = weights.numpy() if hasattr(weights, "numpy") else np.asarray(weights)
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.ascontiguousarray(a)
    if a.dtype == np.float64:
        a = a.astype(np.float32)  # TensorRT has no float64 weights; numpy's default float means float32 here
    if a.dtype.kind not in "fiub":
        raise errors.InputError(f"{what}: weights of dtype {a.dtype} are not numbers")
    return a if a.size else None


def _enum(cls, value, what: str):
    if isinstance(value, enum.Enum) and not isinstance(value, cls):  # PoolingType.MAX where an ActivationType goes
        raise errors.InputError(f"{what}: {value!r} is not a {cls.__name__}")
    try:
        return cls(value)
    except ValueError:
        raise errors.InputError(f"{what}: {value!r} is not a {cls.__name__} (one of "
                                f"{', '.join(m.name for m in cls)})") from None


def _single_axis(mask: int, what: str) -> int:
    mask = int(mask)
    if mask <= 0 or mask & (mask - 1):
        raise errors.InputError(f"{what}: axes must be a bit mask with exactly one bit set, got {mask:#b}")
    return mask.bit_length() - 1


def _mask_axes(mask: int) -> list[int]:
    return [i for i in range(int(mask).bit_length()) if int(mask) >> i & 1]


class ILayer:
    """A layer: its inputs (ITensors), its outputs, a name, and an optional precision (the layer's
    ``layer_precisions`` entry at build) and output types (a Cast after it)."""

    type_name = "Layer"
    settings_may_fix_shapes = False  # True: inputs that do not fit yet may fit once the layer's settings are made
    arity: tuple = (1, 1)  # (fewest, most) inputs; None: no most

    def __init__(self, network, inputs: list, index: int):
        from .network import ITensor
        self._network = network
        self._inputs = list(inputs)
        self._outputs = [ITensor(network, None, None, producer=(self, 0))]
        self._name = f"(Unnamed Layer* {index}) [{self.type_name}]"
        self._precision: DataType | None = None
        self._output_types: dict[int, DataType] = {}

    def __setattr__(self, key, value):
        object.__setattr__(self, key, value)
        if not key.startswith("_"):
            self._network._touch()  # a setting changed: shapes downstream may change

    @property
    def name(self) -> str:
        """The layer's name (TensorRT's "(Unnamed Layer* N) [Type]" until set); the build report and
        ``layer_precisions`` know the layer by it."""
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = str(value)
        self._network._touch()

    @property
    def num_inputs(self) -> int:
        """The number of inputs."""
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        """The number of outputs."""
        return len(self._outputs)

    def get_input(self, index: int):
        """The ITensor at input ``index``."""
        return self._inputs[index]

    def set_input(self, index: int, tensor) -> None:
        """Make input ``index`` read ``tensor`` (an ITensor of the same network)."""
        self._network._own(tensor, f"{self.name}.set_input")
        self._inputs[index] = tensor
        self._network._touch()

    def get_output(self, index: int):
        """The ITensor at output ``index``; InputError when there is no such output."""
        if not 0 <= index < len(self._outputs):
            raise errors.InputError(f"layer {self.name!r} has {len(self._outputs)} output(s), not an output {index}")
        return self._outputs[index]

    @property
    def precision(self) -> DataType:
        """The precision the layer runs in: FLOAT (the default), HALF, BF16, INT8 or FP8; setting it gives the layer
        that ``layer_precisions`` entry at build. Another DataType raises InputError."""
        return self._precision if self._precision is not None else DataType.FLOAT

    @precision.setter
    def precision(self, dtype: DataType) -> None:
        dtype = _enum(DataType, dtype, f"layer {self.name!r} precision")
        if dtype not in PRECISION_NAMES:
            raise errors.InputError(f"layer {self.name!r}: Kiln runs layers in "
                                    f"{', '.join(d.name for d in PRECISION_NAMES)}, not {dtype.name}")
        self._precision = dtype

    @property
    def precision_is_set(self) -> bool:
        """True when ``precision`` was set."""
        return self._precision is not None

    def reset_precision(self) -> None:
        """Forget the precision set, leaving the choice to the builder."""
        self._precision = None

    def set_output_type(self, index: int, dtype: DataType) -> None:
        """The output's type: a Cast to it is written after the layer."""
        dtype = _enum(DataType, dtype, f"layer {self.name!r} output type")
        if dtype not in _TO_KILN:
            raise errors.InputError(f"layer {self.name!r}: output type {dtype.name} has no Kiln element type")
        self.get_output(index)
        self._output_types[int(index)] = dtype
        self._network._touch()

    def get_output_type(self, index: int) -> DataType:
        """The type of output ``index``: the one set with ``set_output_type``, else the type it has."""
        return self._output_types.get(int(index), self.get_output(index).dtype)

    def output_type_is_set(self, index: int) -> bool:
        """True when ``set_output_type`` was called for output ``index``."""
        return int(index) in self._output_types

    def reset_output_type(self, index: int) -> None:
        """Forget the type set for output ``index``."""
        self._output_types.pop(int(index), None)
        self._network._touch()

    def check(self, shapes: list) -> str | None:
        """Why the layer's inputs (given their shapes) are wrong, or None."""
        return None

    def data_dependent_shape(self, shapes: list) -> tuple | None:
        """For a layer whose output shape depends on its input data: that shape, unknown dims as strings."""
        return None

    def emit(self, e: Emitter, inputs: list[Value]) -> list[Value]:  # pragma: no cover - interface
        """Write the layer's equivalent standard ONNX nodes through the Emitter ``e`` and return its output values.
        Each layer type implements it; the network calls it when it builds its Graph (users do not)."""
        raise NotImplementedError


class _Windowed(ILayer):
    """Settings shared by convolution and pooling: stride, padding (pre/post), nd."""

    def _init_window(self, nd: int) -> None:
        self.stride_nd = Dims((1,) * nd)
        self.pre_padding = Dims((0,) * nd)
        self.post_padding = Dims((0,) * nd)

    @property
    def padding_nd(self) -> Dims:
        """Symmetric padding per spatial dimension (reads ``pre_padding``; setting it sets pre and post padding)."""
        return self.pre_padding

    @padding_nd.setter
    def padding_nd(self, pads) -> None:
        self.pre_padding = self.post_padding = Dims(int(p) for p in pads)

    def _window_attrs(self) -> dict:
        return {"strides": [int(s) for s in self.stride_nd],
                "pads": [int(p) for p in self.pre_padding] + [int(p) for p in self.post_padding]}


class IConvolutionLayer(_Windowed):
    """A convolution (ONNX Conv). Settings: ``num_output_maps``, ``kernel_size_nd``, ``kernel`` and ``bias``
    (numpy), ``stride_nd``, ``pre_padding``/``post_padding`` (or ``padding_nd``), ``dilation_nd``, ``num_groups``."""

    type_name = "Convolution"
    settings_may_fix_shapes = True  # num_groups is set after add_convolution_nd

    def __init__(self, network, inputs, index, num_output_maps: int, kernel_shape, kernel, bias):
        super().__init__(network, inputs, index)
        self.num_output_maps = int(num_output_maps)
        self.kernel_size_nd = Dims(int(k) for k in kernel_shape)
        self.kernel = _array(kernel, "add_convolution_nd kernel")
        self.bias = _array(bias, "add_convolution_nd bias")
        self._init_window(len(self.kernel_size_nd))
        self.dilation_nd = Dims((1,) * len(self.kernel_size_nd))
        self.num_groups = 1

    def check(self, shapes):
        per_map = self.num_output_maps * int(np.prod(self.kernel_size_nd))
        if self.kernel is None or self.kernel.size % per_map:
            return (f"kernel has {0 if self.kernel is None else self.kernel.size} weights, not a multiple of "
                    f"num_output_maps x kernel volume = {per_map}")
        if self.bias is not None and self.bias.size != self.num_output_maps:
            return f"bias has {self.bias.size} weights, not num_output_maps = {self.num_output_maps}"
        if shapes[0] is not None and len(shapes[0]) != len(self.kernel_size_nd) + 2:
            return f"input of rank {len(shapes[0])} for a {len(self.kernel_size_nd)}-d kernel (needs N, C, spatial)"
        return None

    def emit(self, e, inputs):
        ks = [int(k) for k in self.kernel_size_nd]
        w = self.kernel.reshape(self.num_output_maps, -1, *ks)
        args = [inputs[0], e.const(w, "kernel")] + ([e.const(self.bias, "bias")] if self.bias is not None else [])
        return [e.op("Conv", args, kernel_shape=ks, dilations=[int(d) for d in self.dilation_nd],
                     group=int(self.num_groups), **self._window_attrs())]


class IDeconvolutionLayer(IConvolutionLayer):
    """A transposed convolution (ONNX ConvTranspose), with the settings of IConvolutionLayer; the kernel is laid
    out as TensorRT's (input channels, output maps per group, spatial dims)."""

    type_name = "Deconvolution"

    def emit(self, e, inputs):
        ks = [int(k) for k in self.kernel_size_nd]
        w = self.kernel.reshape(-1, self.num_output_maps // int(self.num_groups), *ks)  # TensorRT's CKRS
        args = [inputs[0], e.const(w, "kernel")] + ([e.const(self.bias, "bias")] if self.bias is not None else [])
        return [e.op("ConvTranspose", args, kernel_shape=ks, dilations=[int(d) for d in self.dilation_nd],
                     group=int(self.num_groups), **self._window_attrs())]


class IPoolingLayer(_Windowed):
    """Max or average pooling (ONNX MaxPool or AveragePool). Settings: ``type``, ``window_size_nd``, ``stride_nd``,
    padding, ``average_count_excludes_padding`` (True by default).

    Kiln: PoolingType.MAX_AVERAGE_BLEND is refused (InputError) when the layer is added.
    """

    type_name = "Pooling"

    def __init__(self, network, inputs, index, type, window_size):  # noqa: A002 - TensorRT's name
        super().__init__(network, inputs, index)
        self.type = _enum(PoolingType, type, "add_pooling_nd")
        if self.type == PoolingType.MAX_AVERAGE_BLEND:
            raise errors.InputError("add_pooling_nd: PoolingType.MAX_AVERAGE_BLEND has no ONNX equivalent in Kiln; "
                                    "add a MAX and an AVERAGE pooling and blend them with add_elementwise")
        self.window_size_nd = Dims(int(k) for k in window_size)
        self._init_window(len(self.window_size_nd))
        self.average_count_excludes_padding = True

    def emit(self, e, inputs):
        ks = [int(k) for k in self.window_size_nd]
        if self.type == PoolingType.MAX:
            return [e.op("MaxPool", [inputs[0]], kernel_shape=ks, **self._window_attrs())]
        return [e.op("AveragePool", [inputs[0]], kernel_shape=ks, **self._window_attrs(),
                     count_include_pad=0 if self.average_count_excludes_padding else 1)]


def _scalar(e: Emitter, x: float, hint: str) -> Value:
    return e.const(np.asarray(x, np.float32), hint)


# ActivationType -> its ONNX nodes; alpha and beta as TensorRT defines them for each (both default to 0).
_ACTIVATIONS = {
    ActivationType.RELU: lambda e, x, a, b: e.op("Relu", [x]),
    ActivationType.SIGMOID: lambda e, x, a, b: e.op("Sigmoid", [x]),
    ActivationType.TANH: lambda e, x, a, b: e.op("Tanh", [x]),
    ActivationType.LEAKY_RELU: lambda e, x, a, b: e.op("LeakyRelu", [x], alpha=a),  # x < 0: a * x
    ActivationType.ELU: lambda e, x, a, b: e.op("Elu", [x], alpha=a),  # x < 0: a * (exp(x) - 1)
    ActivationType.SELU: lambda e, x, a, b: e.op("Selu", [x], alpha=a, gamma=b),  # b * (x or a * (exp(x) - 1))
    ActivationType.SOFTSIGN: lambda e, x, a, b: e.op("Softsign", [x]),
    # a * log(exp(b * x) + 1)
    ActivationType.SOFTPLUS: lambda e, x, a, b: e.op("Mul", [e.op("Softplus", [e.op("Mul", [x, _scalar(e, b, "beta")])]),
                                                            _scalar(e, a, "alpha")]),
    ActivationType.CLIP: lambda e, x, a, b: e.op("Clip", [x, _scalar(e, a, "min"), _scalar(e, b, "max")]),
    ActivationType.HARD_SIGMOID: lambda e, x, a, b: e.op("HardSigmoid", [x], alpha=a, beta=b),  # max(0, min(1, a*x+b))
    # a * tanh(b * x)
    ActivationType.SCALED_TANH: lambda e, x, a, b: e.op("Mul", [e.op("Tanh", [e.op("Mul", [x, _scalar(e, b, "beta")])]),
                                                               _scalar(e, a, "alpha")]),
    ActivationType.THRESHOLDED_RELU: lambda e, x, a, b: e.op("ThresholdedRelu", [x], alpha=a),  # x > a: x, else 0
    ActivationType.GELU_ERF: lambda e, x, a, b: e.op("Gelu", [x], approximate="none"),
    ActivationType.GELU_TANH: lambda e, x, a, b: e.op("Gelu", [x], approximate="tanh"),
}


class IActivationLayer(ILayer):
    """An activation function of ``type`` (an ActivationType), with its ``alpha`` and ``beta`` parameters (0 by
    default; what they mean depends on the type, as in TensorRT)."""

    type_name = "Activation"

    def __init__(self, network, inputs, index, type):  # noqa: A002
        super().__init__(network, inputs, index)
        self.type = _enum(ActivationType, type, "add_activation")
        self.alpha = 0.0
        self.beta = 0.0

    def emit(self, e, inputs):
        return [_ACTIVATIONS[ActivationType(self.type)](e, inputs[0], float(self.alpha), float(self.beta))]


# ElementWiseOperation -> ONNX op (FLOOR_DIV: Floor of Div)
_ELEMENTWISE = {ElementWiseOperation.SUM: "Add", ElementWiseOperation.PROD: "Mul", ElementWiseOperation.MAX: "Max",
                ElementWiseOperation.MIN: "Min", ElementWiseOperation.SUB: "Sub", ElementWiseOperation.DIV: "Div",
                ElementWiseOperation.POW: "Pow", ElementWiseOperation.AND: "And", ElementWiseOperation.OR: "Or",
                ElementWiseOperation.XOR: "Xor", ElementWiseOperation.EQUAL: "Equal",
                ElementWiseOperation.GREATER: "Greater", ElementWiseOperation.LESS: "Less"}


class IElementWiseLayer(ILayer):
    """A binary elementwise operation ``op`` (an ElementWiseOperation) of two inputs; as in TensorRT, both inputs must
    have the same rank (sizes of 1 broadcast)."""

    type_name = "ElementWise"
    arity = (2, 2)

    def __init__(self, network, inputs, index, op):
        super().__init__(network, inputs, index)
        self.op = _enum(ElementWiseOperation, op, "add_elementwise")

    def check(self, shapes):
        if shapes[0] is not None and shapes[1] is not None and len(shapes[0]) != len(shapes[1]):
            return (f"inputs of rank {len(shapes[0])} and {len(shapes[1])}: TensorRT broadcasts only between "
                    f"equal ranks (reshape one with add_shuffle)")
        return None

    def emit(self, e, inputs):
        if self.op == ElementWiseOperation.FLOOR_DIV:
            return [e.op("Floor", [e.op("Div", inputs)])]
        return [e.op(_ELEMENTWISE[ElementWiseOperation(self.op)], inputs)]


class IMatrixMultiplyLayer(ILayer):
    """A matrix product of two inputs (ONNX MatMul); ``op0`` and ``op1`` (MatrixOperation) say whether each input is
    used as is, transposed in its last two dims, or as a vector."""

    type_name = "MatrixMultiply"
    arity = (2, 2)

    def __init__(self, network, inputs, index, op0, op1):
        super().__init__(network, inputs, index)
        self.op0 = _enum(MatrixOperation, op0, "add_matrix_multiply op0")
        self.op1 = _enum(MatrixOperation, op1, "add_matrix_multiply op1")

    def get_operation(self, index: int) -> MatrixOperation:
        """The MatrixOperation of input ``index`` (0 or 1)."""
        return (self.op0, self.op1)[index]

    def set_operation(self, index: int, op: MatrixOperation) -> None:
        """Set the MatrixOperation of input ``index`` (0 or 1)."""
        setattr(self, ("op0", "op1")[index], _enum(MatrixOperation, op, "set_operation"))

    def emit(self, e, inputs):
        a, b = inputs
        if self.op0 == MatrixOperation.TRANSPOSE:
            a = _swap_last(e, a)
        if self.op1 == MatrixOperation.TRANSPOSE:
            b = _swap_last(e, b)
        if self.op0 == MatrixOperation.VECTOR:  # a's last dim is a vector: [..., K] -> [..., 1, K], result [..., N]
            a = e.op("Unsqueeze", [a, e.ints([-2], "a_axis")])
        if self.op1 == MatrixOperation.VECTOR:  # b's last dim is a vector: [..., K] -> [..., K, 1], result [..., M]
            b = e.op("Unsqueeze", [b, e.ints([-1], "b_axis")])
        y = e.op("MatMul", [a, b])
        if self.op1 == MatrixOperation.VECTOR:
            y = e.op("Squeeze", [y, e.ints([-1], "b_squeeze")])
        if self.op0 == MatrixOperation.VECTOR:
            y = e.op("Squeeze", [y, e.ints([-2 if self.op1 != MatrixOperation.VECTOR else -1], "a_squeeze")])
        return [y]


def _swap_last(e: Emitter, x: Value) -> Value:
    rank = len(e.shape(x))
    perm = list(range(rank))
    perm[-2:] = perm[-1], perm[-2]
    return e.op("Transpose", [x], perm=perm)


class IShuffleLayer(ILayer):
    """A transpose, reshape, transpose sequence; each step is skipped while its setting is None. Settings:
    ``first_transpose``, ``reshape_dims`` (0 copies the input's dim while ``zero_is_placeholder``, the default),
    ``second_transpose``."""

    type_name = "Shuffle"

    def __init__(self, network, inputs, index):
        super().__init__(network, inputs, index)
        self.first_transpose = None
        self.reshape_dims = None
        self.second_transpose = None
        self.zero_is_placeholder = True

    def emit(self, e, inputs):
        x = inputs[0]
        if self.first_transpose is not None:
            x = e.op("Transpose", [x], perm=[int(p) for p in self.first_transpose])
        if self.reshape_dims is not None:
            x = e.op("Reshape", [x, e.ints(self.reshape_dims, "shape")], allowzero=0 if self.zero_is_placeholder else 1)
        if self.second_transpose is not None:
            x = e.op("Transpose", [x], perm=[int(p) for p in self.second_transpose])
        return [x if x is not inputs[0] else e.op("Identity", [x])]


def _default_axis(e: Emitter, x: Value) -> int:
    """TensorRT's default for softmax and concatenation: the number of dims minus three, or 0 under three."""
    return max(0, len(e.shape(x)) - 3)


class ISoftMaxLayer(ILayer):
    """Softmax along one axis; by default the axis TensorRT picks (rank minus three, or 0 below rank three)."""

    type_name = "SoftMax"

    def __init__(self, network, inputs, index):
        super().__init__(network, inputs, index)
        self._axes = None  # None: TensorRT's default axis (see _default_axis)

    @property
    def axes(self) -> int:
        """The softmax axis as a bit mask (1 << axis); setting it needs exactly one bit, else InputError. Reads 0 while
        the default axis is in use."""
        return self._axes if self._axes is not None else 0

    @axes.setter
    def axes(self, mask: int) -> None:
        _single_axis(mask, f"softmax {self.name!r}")
        self._axes = int(mask)
        self._network._touch()

    def emit(self, e, inputs):
        axis = _default_axis(e, inputs[0]) if self._axes is None else _single_axis(self._axes, self.name)
        return [e.op("Softmax", [inputs[0]], axis=axis)]


# ReduceOperation -> ONNX op (opset 18: the axes are an input)
_REDUCE = {ReduceOperation.SUM: "ReduceSum", ReduceOperation.PROD: "ReduceProd", ReduceOperation.MAX: "ReduceMax",
           ReduceOperation.MIN: "ReduceMin", ReduceOperation.AVG: "ReduceMean"}


class IReduceLayer(ILayer):
    """A reduction ``op`` (a ReduceOperation) over the axes of the bit mask ``axes``, keeping the reduced dims when
    ``keep_dims``. Kiln: ReduceOperation.NONE is refused when the layer is added."""

    type_name = "Reduce"

    def __init__(self, network, inputs, index, op, axes: int, keep_dims: bool):
        super().__init__(network, inputs, index)
        self.op = _enum(ReduceOperation, op, "add_reduce")
        if self.op not in _REDUCE:
            raise errors.InputError("add_reduce: ReduceOperation.NONE is for collective operations, not a reduction")
        self.axes = int(axes)
        self.keep_dims = bool(keep_dims)

    def check(self, shapes):
        if not _mask_axes(self.axes):
            return "axes is an empty bit mask: name at least one axis (1 << axis)"
        if shapes[0] is not None and max(_mask_axes(self.axes)) >= len(shapes[0]):
            return f"axes mask {self.axes:#b} names an axis beyond the input's rank {len(shapes[0])}"
        return None

    def emit(self, e, inputs):
        return [e.op(_REDUCE[ReduceOperation(self.op)], [inputs[0], e.ints(_mask_axes(self.axes), "axes")],
                     keepdims=int(self.keep_dims))]


class IConstantLayer(ILayer):
    """A constant tensor: ``weights`` (numpy) of ``shape``; the weights' count must match the shape's volume."""

    type_name = "Constant"
    arity = (0, 0)

    def __init__(self, network, inputs, index, shape, weights):
        super().__init__(network, inputs, index)
        self.shape = Dims(int(d) for d in shape)
        self.weights = _array(weights, "add_constant")

    def check(self, shapes):
        n = 0 if self.weights is None else self.weights.size
        if n != int(np.prod(self.shape)):
            return f"{n} weights for shape {list(self.shape)} ({int(np.prod(self.shape))} elements)"
        return None

    def emit(self, e, inputs):
        return [e.op("Identity", [e.const(self.weights.reshape(tuple(self.shape)), "weights")])]


class IConcatenationLayer(ILayer):
    """Joins its inputs along ``axis``; while ``axis`` is None, the axis TensorRT picks (rank minus three, or 0 below
    rank three)."""

    type_name = "Concatenation"
    arity = (1, None)

    def __init__(self, network, inputs, index):
        super().__init__(network, inputs, index)
        self.axis = None  # None: TensorRT's default axis (see _default_axis)

    def emit(self, e, inputs):
        axis = _default_axis(e, inputs[0]) if self.axis is None else int(self.axis)
        return [e.op("Concat", list(inputs), axis=axis)]


class ISliceLayer(ILayer):
    """Takes ``shape`` elements per dimension from ``start`` every ``stride`` (strides may be negative); the three
    have the input's rank."""

    type_name = "Slice"

    def __init__(self, network, inputs, index, start, shape, stride):
        super().__init__(network, inputs, index)
        self.start, self.shape, self.stride = Dims(start), Dims(shape), Dims(stride)

    def check(self, shapes):
        if not len(self.start) == len(self.shape) == len(self.stride):
            return f"start {list(self.start)}, shape {list(self.shape)} and stride {list(self.stride)} differ in rank"
        if shapes[0] is not None and len(shapes[0]) != len(self.start):
            return f"start has {len(self.start)} dims for an input of rank {len(shapes[0])}"
        return None

    def emit(self, e, inputs):
        starts = [int(s) for s in self.start]
        steps = [int(s) for s in self.stride]
        # the element after the last one taken; below index 0 (a negative stride) ONNX needs "before the start"
        ends = [s + (n - 1) * st + (1 if st > 0 else -1) for s, n, st in zip(starts, self.shape, steps)]
        ends = [end if end >= 0 else -(1 << 62) for end in ends]
        return [e.op("Slice", [inputs[0], e.ints(starts, "starts"), e.ints(ends, "ends"),
                               e.ints(range(len(starts)), "axes"), e.ints(steps, "steps")])]


class IGatherLayer(ILayer):
    """Gathers from the first input at the indices of the second: along ``axis`` (DEFAULT mode), element by element
    (ELEMENT) or by index tuples (ND, with ``num_elementwise_dims`` leading batch dims)."""

    type_name = "Gather"
    arity = (2, 2)

    def __init__(self, network, inputs, index, axis: int, mode=GatherMode.DEFAULT):
        super().__init__(network, inputs, index)
        self.axis = int(axis)
        self.mode = _enum(GatherMode, mode, "add_gather")
        self.num_elementwise_dims = 0

    def emit(self, e, inputs):
        if self.mode == GatherMode.ELEMENT:
            return [e.op("GatherElements", inputs, axis=self.axis)]
        if self.mode == GatherMode.ND:
            return [e.op("GatherND", inputs, batch_dims=int(self.num_elementwise_dims))]
        return [e.op("Gather", inputs, axis=self.axis)]


# UnaryOperation -> ONNX op
_UNARY = {UnaryOperation.EXP: "Exp", UnaryOperation.LOG: "Log", UnaryOperation.SQRT: "Sqrt",
          UnaryOperation.RECIP: "Reciprocal", UnaryOperation.ABS: "Abs", UnaryOperation.NEG: "Neg",
          UnaryOperation.SIN: "Sin", UnaryOperation.COS: "Cos", UnaryOperation.TAN: "Tan", UnaryOperation.SINH: "Sinh",
          UnaryOperation.COSH: "Cosh", UnaryOperation.ASIN: "Asin", UnaryOperation.ACOS: "Acos",
          UnaryOperation.ATAN: "Atan", UnaryOperation.ASINH: "Asinh", UnaryOperation.ACOSH: "Acosh",
          UnaryOperation.ATANH: "Atanh", UnaryOperation.CEIL: "Ceil", UnaryOperation.FLOOR: "Floor",
          UnaryOperation.ERF: "Erf", UnaryOperation.NOT: "Not", UnaryOperation.SIGN: "Sign",
          UnaryOperation.ROUND: "Round", UnaryOperation.ISINF: "IsInf", UnaryOperation.ISNAN: "IsNaN"}


class IUnaryLayer(ILayer):
    """An elementwise function ``op`` (a UnaryOperation) of one input."""

    type_name = "Unary"

    def __init__(self, network, inputs, index, op):
        super().__init__(network, inputs, index)
        self.op = _enum(UnaryOperation, op, "add_unary")

    def emit(self, e, inputs):
        return [e.op(_UNARY[UnaryOperation(self.op)], [inputs[0]])]


class IScaleLayer(ILayer):
    """(x * scale + shift) ** power, each per tensor (UNIFORM), per channel (CHANNEL) or per element of the
    dims from the channel axis on (ELEMENTWISE); absent weights are skipped."""

    type_name = "Scale"

    def __init__(self, network, inputs, index, mode, shift, scale, power, channel_axis: int = 1):
        super().__init__(network, inputs, index)
        self.mode = _enum(ScaleMode, mode, "add_scale")
        self.shift = _array(shift, "add_scale shift")
        self.scale = _array(scale, "add_scale scale")
        self.power = _array(power, "add_scale power")
        self.channel_axis = int(channel_axis)

    def _shaped(self, w: np.ndarray, shape: tuple) -> np.ndarray:
        if self.mode == ScaleMode.UNIFORM:
            return w.reshape(())
        trailing = shape[self.channel_axis:]
        if self.mode == ScaleMode.CHANNEL:
            return w.reshape((-1,) + (1,) * (len(trailing) - 1))
        return w.reshape(trailing)

    def check(self, shapes):
        if shapes[0] is None:
            return None
        trailing = shapes[0][self.channel_axis:]
        want = {ScaleMode.UNIFORM: 1, ScaleMode.CHANNEL: trailing[0] if trailing else None,
                ScaleMode.ELEMENTWISE: int(np.prod(trailing)) if all(isinstance(d, int) for d in trailing) else None}
        n = want[ScaleMode(self.mode)]
        for what, w in (("shift", self.shift), ("scale", self.scale), ("power", self.power)):
            if w is not None and isinstance(n, int) and w.size != n:
                return f"{what} has {w.size} weights; ScaleMode.{ScaleMode(self.mode).name} needs {n}"
        return None

    def emit(self, e, inputs):
        x = inputs[0]
        shape = e.shape(x)
        for op, w, hint in (("Mul", self.scale, "scale"), ("Add", self.shift, "shift"), ("Pow", self.power, "power")):
            if w is not None:
                x = e.op(op, [x, e.const(self._shaped(w, shape), hint)])
        return [x if x is not inputs[0] else e.op("Identity", [x])]


class INormalizationLayer(ILayer):
    """(x - mean) / sqrt(var + epsilon) * scale + bias, mean and variance over the axes of ``axes``."""

    type_name = "Normalization"
    arity = (3, 3)

    def __init__(self, network, inputs, index, axes: int):
        super().__init__(network, inputs, index)
        self.axes = int(axes)
        self.epsilon = 1e-5
        self.num_groups = 1

    def check(self, shapes):
        if int(self.num_groups) != 1:
            return "num_groups > 1 (group normalization) is not supported by kiln.trt: reshape to groups first"
        return None if _mask_axes(self.axes) else "axes is an empty bit mask"

    def emit(self, e, inputs):
        x, scale, bias = inputs
        axes = e.ints(_mask_axes(self.axes), "axes")
        d = e.op("Sub", [x, e.op("ReduceMean", [x, axes], keepdims=1)])
        var = e.op("ReduceMean", [e.op("Mul", [d, d]), axes], keepdims=1)
        y = e.op("Div", [d, e.op("Sqrt", [e.op("Add", [var, _scalar(e, float(self.epsilon), "epsilon")])])])
        return [e.op("Add", [e.op("Mul", [y, scale]), bias])]


class IIdentityLayer(ILayer):
    """Passes its input through unchanged."""

    type_name = "Identity"

    def emit(self, e, inputs):
        return [e.op("Identity", [inputs[0]])]


class ICastLayer(ILayer):
    """Converts its input to ``to_type`` (a DataType with a Kiln element type; others raise InputError)."""

    type_name = "Cast"

    def __init__(self, network, inputs, index, to_type):
        super().__init__(network, inputs, index)
        self.to_type = _enum(DataType, to_type, "add_cast")
        if self.to_type not in _TO_KILN:
            raise errors.InputError(f"add_cast: {self.to_type.name} has no Kiln element type")

    def emit(self, e, inputs):
        return [e.op("Cast", [inputs[0]], to=int(_TO_KILN[DataType(self.to_type)]))]


class INonZeroLayer(ILayer):
    """The indices of the non-zero elements, [rank, count] int64: count is known only at run time (an output of
    it needs an IOutputAllocator)."""

    type_name = "NonZero"

    def data_dependent_shape(self, shapes: list) -> tuple | None:
        return None if shapes[0] is None else (len(shapes[0]), "count")

    def emit(self, e, inputs):
        out = e.op("NonZero", [inputs[0]])
        out.type = TensorType(DType.INT64, (len(e.shape(inputs[0])), f"{self.name}_count"))  # ONNX's type rule
        return [out]


class IPluginV3Layer(ILayer):
    """A registered Python plugin (kiln.trt.plugin) applied to its inputs: one node of the plugin's namespace and
    name with the call's attributes, which the build runs like a plugin node of an ONNX model."""

    type_name = "PluginV3"
    arity = (0, None)

    def __init__(self, network, inputs: list, index: int, call):
        super().__init__(network, inputs, index)
        from .network import ITensor
        self._call = call
        self._outputs = [ITensor(network, None, None, producer=(self, i)) for i in range(call.output_count())]

    def emit(self, e, inputs):
        namespace, _, name = self._call.plugin_id.rpartition("::")
        label = e._name()
        outs = [Value(f"{label}:out{i}") for i in range(len(self._outputs))]
        e.nodes.append(e.graph.append(Node(name, inputs, outs, dict(self._call.attrs), name=label, domain=namespace)))
        return outs

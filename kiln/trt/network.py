"""TensorRT's INetworkDefinition and ITensor: a network filled by OnnxParser, or built layer by layer with
``add_input`` / ``add_convolution_nd`` / ... / ``mark_output`` as TensorRT's network-API samples do.

A built network is a list of layer records (kiln/trt/layers.py). Its kiln Graph (standard ONNX ops, weights as
constants) is written from them whenever one is needed: for a tensor's shape, and afresh for each build (the
builder's passes change the graph they are given). So a setting changed after ``add_*`` counts, as in TensorRT.

A bad call raises kiln.errors.InputError (a tensor of another network, an unknown enum value); a layer whose
inputs do not fit (shapes, weight counts) logs an error to the builder's logger and ``add_*`` returns None,
as TensorRT does.
"""
from __future__ import annotations

from .. import errors
from ..ir.graph import Graph, Value
from ..ir.types import TensorType
from . import layers as L
from .layer_enums import GatherMode, MatrixOperation
from .types import DataType, Dims, ILogger, _TO_KILN, _TO_TRT


_SHAPES_REFUSED = "the layers' shapes do not fit"


class ITensor:
    """A tensor of a network: a network input (name, dtype, shape given) or a layer's output (computed)."""

    def __init__(self, network, name: str | None, dtype: DataType | None, shape=None, producer=None):
        self._network, self._name, self._producer = network, name, producer
        self._dtype, self._shape = dtype, shape

    @property
    def name(self) -> str:
        """The tensor's name: the one given, else ``<layer name>_output`` (``_output_N`` for output N > 0)."""
        if self._name is not None:
            return self._name
        layer, index = self._producer
        return f"{layer.name}_output" + (f"_{index}" if index else "")

    @name.setter
    def name(self, value: str) -> None:
        self._name = str(value)
        self._network._touch()

    @property
    def is_network_input(self) -> bool:
        """True for a network input (one made by ``add_input``)."""
        return self._producer is None

    @property
    def is_network_output(self) -> bool:
        """True when the tensor is marked as a network output."""
        return any(t is self for t in self._network._outputs)

    @property
    def shape(self) -> Dims:
        """The dims, -1 where they are fixed only at run time (an input's -1 dims and what follows from them)."""
        if self._producer is None:
            return Dims(self._shape)
        shape = self._network._facts_for(self)[0]
        if shape is None:
            raise errors.ShapeError(f"the shape of tensor {self.name!r} is unknown (a data-dependent shape?)")
        return Dims(d if isinstance(d, int) else -1 for d in shape)

    @shape.setter
    def shape(self, dims) -> None:
        if self._producer is not None:
            raise errors.InputError(f"tensor {self.name!r} is a layer's output: only an input's shape can be set")
        self._shape = Dims(int(d) for d in dims)
        self._network._touch()

    @property
    def dtype(self) -> DataType:
        """The element type: an input's as given (settable), a layer output's as inferred (set it with
        ``layer.set_output_type``)."""
        if self._producer is None:
            return self._dtype
        dtype = self._network._facts_for(self)[1]
        return _TO_TRT.get(dtype, DataType.FLOAT)

    @dtype.setter
    def dtype(self, value: DataType) -> None:
        if self._producer is not None:
            raise errors.InputError(f"tensor {self.name!r} is a layer's output: use layer.set_output_type")
        self._dtype = L._enum(DataType, value, f"tensor {self.name!r} dtype")
        self._network._touch()

    def __repr__(self) -> str:
        return f"ITensor({self.name!r})"


class _ParsedTensor:
    """A tensor of a network filled by OnnxParser (an input, output or node output): its name, shape and dtype."""

    def __init__(self, value, network=None, facts=None):
        self._network = network
        self.name = value.name
        shape, dtype = value.shape, value.dtype
        if facts is not None and shape is None:  # a node output: its shape and type as inferred
            shape, dtype = facts.shape(value), getattr(facts.type_of(value), "dtype", None)
        self.shape = Dims(-1 if not isinstance(d, int) else d for d in (shape or ()))
        self.dtype = _TO_TRT.get(dtype, DataType.FLOAT)

    def __repr__(self) -> str:
        return f"ITensor({self.name!r})"


class _ParsedLayer:
    """A layer of a network filled by OnnxParser: one ONNX node, read-only (its tensors can be marked as outputs
    of the model only through the model, and as debug tensors with ``network.mark_debug``)."""

    def __init__(self, node, network):
        self._node, self._network = node, network

    @property
    def name(self) -> str:
        """The ONNX node's name (``<OpType>`` when it has none)."""
        return self._node.label

    @property
    def type_name(self) -> str:
        """The ONNX op type of the node."""
        return self._node.op_type

    @property
    def num_inputs(self) -> int:
        """The number of the node's inputs."""
        return len(self._node.inputs)

    @property
    def num_outputs(self) -> int:
        """The number of the node's outputs."""
        return len(self._node.outputs)

    def get_input(self, index: int):
        """Input ``index`` of the node as a tensor (None for an omitted optional input)."""
        v = self._node.inputs[index]
        return None if v is None else _ParsedTensor(v, self._network, self._network._parsed_facts())

    def get_output(self, index: int):
        """Output ``index`` of the node as a tensor, e.g. for ``network.mark_debug``."""
        v = self._node.outputs[index]
        return None if v is None else _ParsedTensor(v, self._network, self._network._parsed_facts())

    def __repr__(self) -> str:
        return f"ILayer({self.name!r}, {self.type_name})"


class INetworkDefinition:
    """The network to build: filled by ``OnnxParser.parse``, or built with ``add_input``, the ``add_*`` layer
    methods and ``mark_output``. Made by ``Builder.create_network``.

    Each ``add_*`` returns the new layer (its settings may be changed afterwards, as in TensorRT), or None with an
    error logged when its inputs do not fit (shapes, weight counts); a wrong argument (a tensor of another network,
    an unknown enum value) raises InputError. Kiln: a parsed network's layers are its ONNX nodes (``graph``), read
    through ``get_layer`` (read-only), and layers cannot be added to it.
    """

    def __init__(self, flags: int = 0, logger: ILogger | None = None):
        self.flags = flags
        self.name = "network"
        self._logger = logger
        self._parsed: Graph | None = None
        self._inputs: list[ITensor] = []
        self._layers: list[L.ILayer] = []
        self._outputs: list[ITensor] = []
        self._debug: list = []  # debug tensors: ITensors of a built network, tensor names of a parsed one
        self._version = 0
        self._cached = None  # (version, graph, values by tensor id, facts)
        self._parsed_cache = None  # (parsed graph, facts): the shapes get_layer's tensors report

    # -- the graph ---------------------------------------------------------------------------------------------
    @property
    def graph(self) -> Graph | None:
        """The network as a kiln Graph: the parsed one, or one written afresh from the layers (None if empty)."""
        if self._parsed is not None or not (self._inputs or self._layers):
            return self._parsed
        return self._write()[0]

    @graph.setter
    def graph(self, graph: Graph | None) -> None:
        if graph is not None and (self._inputs or self._layers):
            raise errors.InputError("this network already has layers added with add_*: parse into a new network")
        self._parsed = graph

    def _touch(self) -> None:
        self._version += 1

    def _write(self) -> tuple[Graph, dict[int, Value], dict[int, list]]:
        """The Graph of the layers so far, each tensor's Value, and each layer's nodes."""
        from ..passes.propagate import propagate
        self._check_names()
        graph = Graph(self.name)
        values: dict[int, Value] = {}
        nodes: dict[int, list] = {}
        cache: dict = {}

        def shape_of(v: Value):
            return propagate(graph, registry=_registry(), cache=cache).shape(v)

        for t in self._inputs:
            dims = tuple(d if d >= 0 else f"{t.name}_dim{i}" for i, d in enumerate(t._shape))  # -1: a symbol
            values[id(t)] = graph.add_input(Value(t.name, TensorType(_TO_KILN[t._dtype], dims)))
        for layer in self._layers:
            e = L.Emitter(graph, layer, shape_of)
            try:
                outs = layer.emit(e, [values[id(t)] for t in layer._inputs])
            except (RuntimeError, ValueError, IndexError, TypeError) as err:  # settings that cannot be written
                raise errors.GraphError(f"layer {layer.name!r} ({layer.type_name}): {type(err).__name__}: {err}") \
                    from err
            for index, (t, v) in enumerate(zip(layer._outputs, outs)):
                if index in layer._output_types:
                    v = e.op("Cast", [v], to=int(_TO_KILN[layer._output_types[index]]))
                v.name = t.name
                values[id(t)] = v
            nodes[id(layer)] = e.nodes
        graph.outputs = [values[id(t)] for t in self._outputs]
        return graph, values, nodes

    def _check_names(self) -> None:
        seen: dict[str, int] = {}
        for t in self._inputs + [o for layer in self._layers for o in layer._outputs]:
            seen[t.name] = seen.get(t.name, 0) + 1
        if dup := sorted(n for n, c in seen.items() if c > 1):
            raise errors.GraphError(f"tensor name(s) {dup} used more than once in the network: names must be unique")

    def _state(self):
        """(version, graph, values, facts, other): ``other`` propagates the -1 dims with other probe values, so
        that a dim that differs between the two depends on a run-time dim."""
        if self._cached is None or self._cached[0] != self._version:
            from ..passes.propagate import choose_probes, propagate
            graph, values, _ = self._write()
            try:
                facts = propagate(graph, registry=_registry())
                other = None
                if facts.symbols:
                    probes = choose_probes(graph, None, None, avoid=set(facts.symbols))
                    other = propagate(graph, registry=_registry(), probes=probes)
            except (RuntimeError, ValueError, IndexError, TypeError) as e:  # a shape rule refusing its inputs
                raise errors.ShapeError(f"{_SHAPES_REFUSED}: {type(e).__name__}: {e}") from e
            self._cached = (self._version, graph, values, facts, other)
        return self._cached

    def _facts_for(self, tensor: ITensor):
        """(shape, kiln dtype) of a layer's output tensor; dims fixed only at run time are strings."""
        _, _, values, facts, other = self._state()
        v = values[id(tensor)]
        shape = facts.shape(v)
        if shape is not None and other is not None:
            alt = other.shape(v)
            shape = tuple(d if alt is not None and d == a else f"?{i}" for i, (d, a) in
                          enumerate(zip(shape, alt or shape)))
        if shape is None and tensor._producer is not None:
            layer = tensor._producer[0]
            shapes = [self._facts_for(t)[0] if t._producer is not None else tuple(t._shape) for t in layer._inputs]
            shape = layer.data_dependent_shape(shapes)
        return shape, getattr(facts.type_of(v), "dtype", None)

    def check(self) -> None:
        """Raise BuildError naming the first layer whose output shape does not follow from its inputs and settings
        (settings changed after add_*, such as a reshape_dims of the wrong volume)."""
        if self._parsed is not None:
            return
        for layer in self._layers:
            for out in layer._outputs:
                try:
                    shape = self._facts_for(out)[0]
                except errors.ShapeError as e:
                    raise errors.BuildError(f"layer {layer.name!r}: {e}") from None
                if shape is None:
                    raise errors.BuildError(
                        f"layer {layer.name!r} ({layer.type_name}): its output shape does not follow from its inputs "
                        f"{[t.name for t in layer._inputs]} and settings; check them (e.g. reshape_dims' volume, "
                        f"num_groups against the input channels)")

    def layer_precisions(self) -> dict[str, str]:
        """BuilderConfig.layer_precisions for the precisions set on layers: each of a layer's nodes by name."""
        wanted = [layer for layer in self._layers if layer.precision_is_set]
        if not wanted:
            return {}
        _, _, nodes = self._write()
        return {n.name: L.PRECISION_NAMES[layer.precision] for layer in wanted for n in nodes[id(layer)]}

    # -- inputs, outputs, layers -----------------------------------------------------------------------------
    def _own(self, tensor, what: str) -> None:
        if not isinstance(tensor, ITensor):
            raise errors.InputError(f"{what}: expected an ITensor, got {type(tensor).__name__}"
                                    + (" (the layer that should have made it failed: see the logged error)"
                                       if tensor is None else ""))
        if tensor._network is not self:
            raise errors.InputError(f"{what}: tensor {tensor.name!r} belongs to another network")

    def _log_error(self, message: str) -> None:
        if self._logger is not None:
            self._logger.log(ILogger.ERROR, message)

    def add_input(self, name: str, dtype: DataType, shape) -> ITensor | None:
        """A network input; -1 dims are fixed at run time (and need an optimization profile to build)."""
        dtype = L._enum(DataType, dtype, f"add_input {name!r}")
        if dtype not in _TO_KILN:
            raise errors.InputError(f"add_input {name!r}: {dtype.name} has no Kiln element type")
        if self._parsed is not None:
            raise errors.InputError("add_input: this network was filled by OnnxParser; build a new one to add inputs")
        if any(t.name == name for t in self._inputs):
            self._log_error(f"add_input: there is already an input named {name!r}")
            return None
        t = ITensor(self, str(name), dtype, Dims(int(d) for d in shape))
        self._inputs.append(t)
        self._touch()
        return t

    def mark_output(self, tensor: ITensor) -> None:
        """Make ``tensor`` a network output (once; marking it again does nothing)."""
        self._own(tensor, "mark_output")
        if not tensor.is_network_output:
            self._outputs.append(tensor)
            self._touch()

    def unmark_output(self, tensor: ITensor) -> None:
        """Make ``tensor`` no longer a network output."""
        self._own(tensor, "unmark_output")
        self._outputs = [t for t in self._outputs if t is not tensor]
        self._touch()

    def _parsed_facts(self):
        """Shapes and types of the parsed graph's values (None where inference fails), computed once per parse."""
        if self._parsed is None:
            return None
        if self._parsed_cache is None or self._parsed_cache[0] is not self._parsed:
            from ..passes.propagate import propagate
            try:
                facts = propagate(self._parsed)
            except (errors.KilnError, RuntimeError, ValueError, IndexError, TypeError):
                facts = None
            self._parsed_cache = (self._parsed, facts)
        return self._parsed_cache[1]

    # -- debug tensors (kiln/trt/debug_listener.py) ---------------------------------------------------------
    def _debug_key(self, tensor, what: str):
        """What ``_debug`` holds for ``tensor``: the ITensor of a built network, the name of a parsed one's."""
        if isinstance(tensor, _ParsedTensor):
            if tensor._network is not self:
                raise errors.InputError(f"{what}: tensor {tensor.name!r} belongs to another network")
            return tensor.name
        self._own(tensor, what)
        return tensor

    def _debug_index(self, key) -> int:
        return next((i for i, k in enumerate(self._debug) if (k == key if isinstance(key, str) else k is key)), -1)

    def mark_debug(self, tensor) -> bool:
        """Mark ``tensor`` as a debug tensor: the engine keeps it observable, and an execution context's
        IDebugListener receives its value after each execute where its debug state is on. Returns True (marking it
        again changes nothing). Kiln: the tensor stays unfused in the engine, as in TensorRT."""
        key = self._debug_key(tensor, "mark_debug")
        if self._debug_index(key) < 0:
            self._debug.append(key)
            self._touch()
        return True

    def unmark_debug(self, tensor) -> bool:
        """Make ``tensor`` no longer a debug tensor; True when it was one, False (nothing changed) otherwise."""
        i = self._debug_index(self._debug_key(tensor, "unmark_debug"))
        if i < 0:
            return False
        del self._debug[i]
        self._touch()
        return True

    def is_debug_tensor(self, tensor) -> bool:
        """True when ``tensor`` is marked as a debug tensor."""
        return self._debug_index(self._debug_key(tensor, "is_debug_tensor")) >= 0

    def debug_names(self) -> list[str]:
        """The names of the debug tensors, in the order they were marked (what the build keeps observable)."""
        return [k if isinstance(k, str) else k.name for k in self._debug]

    @property
    def num_inputs(self) -> int:
        """The number of network inputs."""
        return len(self._parsed.inputs) if self._parsed is not None else len(self._inputs)

    @property
    def num_outputs(self) -> int:
        """The number of network outputs."""
        return len(self._parsed.outputs) if self._parsed is not None else len(self._outputs)

    @property
    def num_layers(self) -> int:
        """The number of layers (for a parsed network, its ONNX nodes)."""
        return len(self._parsed.nodes) if self._parsed is not None else len(self._layers)

    def get_input(self, i: int):
        """Network input ``i``: its ITensor, or for a parsed network an object with its name, shape and dtype."""
        return _ParsedTensor(self._parsed.inputs[i], self) if self._parsed is not None else self._inputs[i]

    def get_output(self, i: int):
        """Network output ``i``, as ``get_input`` gives inputs."""
        return _ParsedTensor(self._parsed.outputs[i], self) if self._parsed is not None else self._outputs[i]

    def get_layer(self, i: int):
        """Layer ``i``: an ILayer of a network built with ``add_*``; for a parsed network, its ``i``-th ONNX node as
        a read-only layer (name, type_name, get_input, get_output: enough for ``mark_debug``; Kiln has no layer
        settings for parsed networks)."""
        if self._parsed is not None:
            return _ParsedLayer(self._parsed.nodes[i], self)
        return self._layers[i]

    @property
    def has_implicit_batch_dimension(self) -> bool:
        """Always False: the batch is part of every shape."""
        return False

    def _add(self, what: str, cls, inputs: list, *args):
        """Add a layer, or log why it cannot be and return None (TensorRT's behaviour)."""
        fewest, most = cls.arity
        if len(inputs) < fewest or (most is not None and len(inputs) > most):
            want = f"{fewest}" if fewest == most else f"at least {fewest}" if most is None else f"{fewest} to {most}"
            raise errors.InputError(f"{what}: takes {want} input tensor(s), got {len(inputs)}")
        for t in inputs:
            self._own(t, what)
        if self._parsed is not None:
            raise errors.InputError(f"{what}: this network was filled by OnnxParser; kiln.trt adds layers only to "
                                    f"networks built with add_input")
        shapes = []
        for t in inputs:
            try:
                shapes.append(tuple(t.shape))
            except errors.ShapeError:
                shapes.append(None)
        layer = cls(self, inputs, len(self._layers), *args)
        shape_rule_refused = False
        try:
            why = layer.check(shapes)
            if why is None:
                self._layers.append(layer)
                self._touch()
                for out in layer._outputs:
                    if self._facts_for(out)[0] is None:
                        why, shape_rule_refused = "its output shape cannot be inferred from its inputs", True
        except errors.KilnError as e:
            why, shape_rule_refused = str(e), str(e).startswith(_SHAPES_REFUSED)
        if why is None or (shape_rule_refused and layer.settings_may_fix_shapes):
            return layer  # (the latter: e.g. a grouped convolution before its num_groups is set; the build checks)
        if layer in self._layers:
            self._layers.remove(layer)
            self._touch()
        self._log_error(f"{what} (layer {layer.name!r}, inputs of shape "
                        f"{[list(s) if s is not None else '?' for s in shapes]}): {why}")
        return None

    # -- the layers: TensorRT's add_* with its argument names ---------------------------------------------------
    def add_convolution_nd(self, input, num_output_maps, kernel_shape, kernel, bias=None):  # noqa: A002
        """Add a convolution of ``input`` with ``num_output_maps`` filters of ``kernel_shape`` (spatial dims), weights
        ``kernel`` and optional ``bias``; returns an IConvolutionLayer."""
        return self._add("add_convolution_nd", L.IConvolutionLayer, [input], num_output_maps, kernel_shape, kernel, bias)

    def add_deconvolution_nd(self, input, num_output_maps, kernel_shape, kernel, bias=None):  # noqa: A002
        """Add a transposed convolution, with the arguments of ``add_convolution_nd``; returns an
        IDeconvolutionLayer."""
        return self._add("add_deconvolution_nd", L.IDeconvolutionLayer, [input], num_output_maps, kernel_shape,
                         kernel, bias)

    def add_pooling_nd(self, input, type, window_size):  # noqa: A002
        """Add pooling of ``type`` (a PoolingType) over windows of ``window_size``; returns an IPoolingLayer."""
        return self._add("add_pooling_nd", L.IPoolingLayer, [input], type, window_size)

    def add_activation(self, input, type):  # noqa: A002
        """Add an activation function of ``type`` (an ActivationType); returns an IActivationLayer."""
        return self._add("add_activation", L.IActivationLayer, [input], type)

    def add_elementwise(self, input1, input2, op):
        """Add the elementwise ``op`` (an ElementWiseOperation) of two tensors of equal rank; returns an
        IElementWiseLayer."""
        return self._add("add_elementwise", L.IElementWiseLayer, [input1, input2], op)

    def add_matrix_multiply(self, input0, op0, input1, op1=MatrixOperation.NONE):
        """Add the matrix product of ``input0`` and ``input1``, each used as its MatrixOperation says; returns an
        IMatrixMultiplyLayer."""
        return self._add("add_matrix_multiply", L.IMatrixMultiplyLayer, [input0, input1], op0, op1)

    def add_shuffle(self, input):  # noqa: A002
        """Add a transpose/reshape/transpose of ``input`` (set them on the returned IShuffleLayer)."""
        return self._add("add_shuffle", L.IShuffleLayer, [input])

    def add_softmax(self, input):  # noqa: A002
        """Add a softmax of ``input``; returns an ISoftMaxLayer (set its ``axes``)."""
        return self._add("add_softmax", L.ISoftMaxLayer, [input])

    def add_reduce(self, input, op, axes, keep_dims):  # noqa: A002
        """Add the reduction ``op`` over the axes of the bit mask ``axes`` (1 << axis), keeping them as size 1 when
        ``keep_dims``; returns an IReduceLayer."""
        return self._add("add_reduce", L.IReduceLayer, [input], op, axes, keep_dims)

    def add_constant(self, shape, weights):
        """Add a constant tensor of ``shape`` holding ``weights``; returns an IConstantLayer."""
        return self._add("add_constant", L.IConstantLayer, [], shape, weights)

    def add_concatenation(self, inputs):
        """Add the concatenation of ``inputs``; returns an IConcatenationLayer (set its ``axis``)."""
        return self._add("add_concatenation", L.IConcatenationLayer, list(inputs))

    def add_slice(self, input, start, shape, stride):  # noqa: A002
        """Add a slice of ``input``: ``shape`` elements per dimension from ``start``, every ``stride``; returns an
        ISliceLayer."""
        return self._add("add_slice", L.ISliceLayer, [input], start, shape, stride)

    def add_gather(self, input, indices, axis):  # noqa: A002
        """Add a gather from ``input`` at ``indices`` along ``axis``; returns an IGatherLayer."""
        return self._add("add_gather", L.IGatherLayer, [input, indices], axis)

    def add_gather_v2(self, input, indices, mode):  # noqa: A002
        """Add a gather from ``input`` at ``indices`` in ``mode`` (a GatherMode); returns an IGatherLayer."""
        return self._add("add_gather_v2", L.IGatherLayer, [input, indices], 0, GatherMode(mode))

    def add_unary(self, input, op):  # noqa: A002
        """Add the elementwise function ``op`` (a UnaryOperation) of ``input``; returns an IUnaryLayer."""
        return self._add("add_unary", L.IUnaryLayer, [input], op)

    def add_scale(self, input, mode, shift=None, scale=None, power=None):  # noqa: A002
        """Add ``(input * scale + shift) ** power`` with weights shaped by ``mode`` (a ScaleMode), channels on axis 1;
        absent weights are skipped. Returns an IScaleLayer."""
        return self._add("add_scale", L.IScaleLayer, [input], mode, shift, scale, power)

    def add_scale_nd(self, input, mode, shift=None, scale=None, power=None, channel_axis=1):  # noqa: A002
        """``add_scale`` with the channel axis given as ``channel_axis``."""
        return self._add("add_scale_nd", L.IScaleLayer, [input], mode, shift, scale, power, channel_axis)

    def add_normalization(self, input, scale, bias, axesMask):  # noqa: A002, N803 - TensorRT's names
        """Add a normalization of ``input`` over the axes of the bit mask ``axesMask``, then ``* scale + bias``;
        returns an INormalizationLayer (Kiln: ``num_groups`` must stay 1)."""
        return self._add("add_normalization", L.INormalizationLayer, [input, scale, bias], axesMask)

    def add_identity(self, input):  # noqa: A002
        """Add a layer that passes ``input`` through; returns an IIdentityLayer."""
        return self._add("add_identity", L.IIdentityLayer, [input])

    def add_cast(self, input, to_type):  # noqa: A002
        """Add a conversion of ``input`` to ``to_type`` (a DataType); returns an ICastLayer."""
        return self._add("add_cast", L.ICastLayer, [input], to_type)

    def add_non_zero(self, input):  # noqa: A002
        """Add the indices of the non-zero elements of ``input``; returns an INonZeroLayer."""
        return self._add("add_non_zero", L.INonZeroLayer, [input])

    def add_plugin(self, call, aot: bool = False):
        """Add a registered Python plugin, as TensorRT 10.8's ``network.add_plugin(trtp.op.<ns>.<name>(tensors...,
        attr=value))``; returns an IPluginV3Layer. ``aot``: accepted; Kiln runs the plugin's ``impl`` either way
        (it does not load ahead-of-time kernels)."""
        from .plugin import PluginCall
        if not isinstance(call, PluginCall):
            raise errors.InputError(f"add_plugin takes a plugin call, kiln.trt.plugin.op.<namespace>.<name>(...), "
                                    f"got {type(call).__name__}")
        return self._add("add_plugin", L.IPluginV3Layer, list(call.inputs), call)


def _registry():
    """The ops a network's layers may use: Kiln's and the process's registered Python plugins (kiln.trt.plugin),
    whose shape rules infer a plugin layer's outputs; None (Kiln's own) when no plugin is registered."""
    from .plugin import registered
    plugins = registered()
    return plugins.registry() if len(plugins) else None

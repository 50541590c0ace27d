"""Every error Kiln raises on purpose is a KilnError; the subclass says which kind of problem it is."""


class KilnError(Exception):
    """Base class of all errors Kiln raises for bad input or unsupported models."""


class ModelFormatError(KilnError):
    """The model file or bytes are not a valid ONNX model (truncated, corrupt, missing external data)."""


class GraphError(KilnError):
    """The graph is structurally invalid: cycles, dangling or duplicate value names, bad subgraphs."""


class UnsupportedOpError(KilnError):
    """One or more nodes use operators Kiln cannot run. ``unsupported`` lists (node name, domain, op type, reason)."""

    def __init__(self, unsupported: list[tuple[str, str, str, str]]):
        self.unsupported = list(unsupported)
        lines = [f"  - node {name!r}: {(dom + '::') if dom else ''}{op} ({why})" for name, dom, op, why in self.unsupported]
        super().__init__(f"{len(self.unsupported)} node(s) use unsupported operators:\n" + "\n".join(lines))


class InputError(KilnError):
    """Run-time inputs do not match the graph: unknown or missing names, wrong dtype or shape."""


class ShapeError(KilnError):
    """Shapes are inconsistent, or an input shape lies outside every optimization profile."""


class KernelError(KilnError):
    """A kernel failed while executing a node; the message names the node and op."""


class EngineFormatError(KilnError):
    """An engine file is truncated, tampered with, foreign, or from a newer format version."""


class FusedStepError(KilnError):
    """A fused layer's epilogue step or elementwise program line that is not well formed (kiln/ops/fused_steps.py
    lists the forms); the engine validator reports it as an EngineFormatError naming the layer."""


class DeviceMismatchError(KilnError):
    """An engine was built for a different device than the one it is loaded or run on."""


class ModelMismatchError(KilnError):
    """An ONNX model given for an engine's weights (refit, ``weights_from=``) is not the model it was built
    from, or not of the same architecture: the message says what differs (an initializer, a shape, the graph)."""


class BuildError(KilnError):
    """The builder could not produce an engine (the message names the pass or layer)."""


class CalibrationCacheError(KilnError):
    """A calibration cache cannot be used: malformed, or a scale that cannot work (zero, negative, NaN,
    infinite, subnormal, or a range past float32). The message names the file and the tensor."""


# -- serving (kiln.serve): each maps to one HTTP and one gRPC status in kiln/serve/status.py --------------

class RequestError(KilnError):
    """A serving request that cannot be read: malformed JSON or protobuf, a bad binary-data layout, an
    unknown datatype, data that does not match its declared shape, or a body over the size limit."""


class ModelNotFoundError(KilnError):
    """A serving request names a model or version that the repository does not have, or that is not loaded."""


class ServerBusyError(KilnError):
    """A model's request queue is full, or the server is shutting down: retry later (HTTP 503 / UNAVAILABLE)."""


class RequestTimeoutError(KilnError):
    """A request waited in the queue past its timeout and was not run."""


class RequestTooLargeError(RequestError):
    """A serving request's body is over the server's size limit (HTTP 413 / RESOURCE_EXHAUSTED)."""


class PluginError(KilnError):
    """A plugin (kiln.plugin) that is declared wrongly, or that an engine needs and the process does not have:
    not registered, or registered at another version or with another signature."""

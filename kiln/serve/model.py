"""One loaded model version: its engine, its execution contexts behind a Batcher, what it tells clients
(metadata and completed config), and the checks a request passes before it may join a batch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError, ShapeError
from .batching import Batcher, BatchPolicy
from .config import DEFAULT_MAX_BATCH_SIZE, ModelSettings
from .metrics import ModelMetrics
from .tensors import datatype_of, datatype_of_array

PLATFORM = "kiln"  # what model metadata and config report as the platform / backend


@dataclass(frozen=True)
class InferRequest:
    """A decoded request, the same for HTTP and gRPC."""
    model: str
    version: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None = None      # requested names; None: every output
    timeout_s: float | None = None
    id: str = ""


class LoadedModel:
    def __init__(self, name: str, version: str, engine, settings: ModelSettings, metrics: ModelMetrics,
                 source: str):
        self.name, self.version, self.engine, self.settings, self.source = name, version, engine, settings, source
        self.label = f"{name!r} version {version}"
        self.batch_dim = _batches(engine) and settings.max_batch_size != 0
        self.max_batch_size = self._max_batch_size() if self.batch_dim else 0
        count = settings.instance_count or (2 if engine.device.type == "cuda" else 1)
        contexts = [engine.create_execution_context() for _ in range(count)]
        policy = BatchPolicy(enabled=settings.batching and self.max_batch_size > 1,
                             max_batch_size=max(self.max_batch_size, 1),
                             max_queue_delay_s=settings.max_queue_delay_s,
                             preferred_batch_sizes=settings.preferred_batch_sizes,
                             max_queue_size=settings.max_queue_size,
                             pad_to_buckets=self.max_batch_size > 1 and engine.device.type == "cuda")
        self.metrics = metrics
        self.batcher = Batcher(f"{name}:{version}", contexts, policy, self._fits, metrics)

    def _max_batch_size(self) -> int:
        """max_batch_size from config.pbtxt, else the largest dim 0 every profile admits for every input."""
        profile_max = [min(p.max[i.name][0] for i in self.engine.inputs if i.name in p.max)
                       for p in self.engine.profiles if any(i.name in p.max for i in self.engine.inputs)]
        bound = max(profile_max) if profile_max else None
        want = self.settings.max_batch_size
        if want is None:
            return bound if bound is not None else DEFAULT_MAX_BATCH_SIZE
        if bound is not None and want > bound:
            raise ShapeError(f"model {self.label}: max_batch_size {want} in config.pbtxt exceeds the engine's "
                             f"profiles (largest batch {bound}); rebuild the engine or lower max_batch_size")
        return want

    def _fits(self, shapes: dict[str, tuple]) -> bool:
        return not self.engine.profiles or any(p.contains(shapes) for p in self.engine.profiles)

    # -- what clients see -----------------------------------------------------------------------------
    def metadata(self) -> dict:
        def tensor(info):
            return {"name": info.name, "datatype": datatype_of(info.dtype), "shape": _dims(info.shape)}
        return {"name": self.name, "versions": [self.version], "platform": PLATFORM,
                "inputs": [tensor(i) for i in self.engine.inputs],
                "outputs": [tensor(o) for o in self.engine.outputs]}

    def config(self):
        """The model's ModelConfig as Triton's auto-complete fills it: the file's fields plus the engine's."""
        from tritonclient.grpc import model_config_pb2 as mc
        proto = mc.ModelConfig()
        proto.CopyFrom(self.settings.proto)
        proto.platform, proto.backend, proto.max_batch_size = PLATFORM, PLATFORM, self.max_batch_size
        skip = 1 if self.batch_dim else 0
        for field, infos in ((proto.input, self.engine.inputs), (proto.output, self.engine.outputs)):
            known = {t.name: t for t in field}
            for info in infos:
                t = known.get(info.name) or field.add(name=info.name)
                if info.dtype is not None and datatype_of(info.dtype) in _CONFIG_TYPES:
                    t.data_type = mc.DataType.Value("TYPE_" + _CONFIG_TYPES[datatype_of(info.dtype)])
                del t.dims[:]
                t.dims.extend(_dims(info.shape)[skip:])
        if not proto.instance_group:
            proto.instance_group.add(count=self.batcher.worker_count,
                                     kind=mc.ModelInstanceGroup.KIND_GPU if self.engine.device.type == "cuda"
                                     else mc.ModelInstanceGroup.KIND_CPU)
        return proto

    # -- requests -------------------------------------------------------------------------------------
    def check(self, request: InferRequest) -> tuple[int, tuple]:
        """Validate a request against the engine before it is queued: (batch rows, merge key). Every problem
        is an InputError/ShapeError naming the input; a request that passes cannot fail its batch-mates."""
        want = {i.name: i for i in self.engine.inputs}
        unknown = sorted(set(request.inputs) - set(want))
        if unknown:
            raise InputError(f"model {self.label} has no input {unknown[0]!r}; its inputs are {sorted(want)}")
        missing = [n for n in want if n not in request.inputs]
        if missing:
            raise InputError(f"model {self.label}: missing input {missing[0]!r}; its inputs are {sorted(want)}")
        outputs = [o.name for o in self.engine.outputs]
        for name in request.outputs or ():
            if name not in outputs:
                raise InputError(f"model {self.label} has no output {name!r}; its outputs are {outputs}")
        rows = None
        for name, info in want.items():
            array = request.inputs[name]
            got = datatype_of_array(array)
            if info.dtype is not None and got != datatype_of(info.dtype):
                raise InputError(f"model {self.label}: input {name!r} must have datatype {datatype_of(info.dtype)}"
                                 f", got {got}")
            shape = tuple(array.shape)
            if len(shape) != len(info.shape):
                raise ShapeError(f"model {self.label}: input {name!r} must have shape {_dims(info.shape)} "
                                 f"(rank {len(info.shape)}), got {list(shape)}")
            for i, (dim, size) in enumerate(zip(info.shape, shape)):
                if isinstance(dim, int) and dim != size:
                    raise ShapeError(f"model {self.label}: input {name!r} must have shape {_dims(info.shape)}, "
                                     f"got {list(shape)} (dimension {i})")
            if self.batch_dim:
                if rows is not None and shape[0] != rows:
                    raise ShapeError(f"model {self.label}: every input needs the same batch size (dim 0); "
                                     f"input {name!r} has {shape[0]}, an earlier input {rows}")
                rows = shape[0]
        rows = rows if self.batch_dim else 1
        if self.batch_dim and not 1 <= rows <= self.max_batch_size:
            raise ShapeError(f"model {self.label}: batch size {rows} is outside 1..{self.max_batch_size} "
                             f"(max_batch_size); split the request")
        shapes = {n: tuple(a.shape) for n, a in request.inputs.items()}
        if not self._fits(shapes):
            reasons = "; ".join(f"profile {i}: {p.mismatch(shapes)}" for i, p in enumerate(self.engine.profiles))
            raise ShapeError(f"model {self.label}: input shapes fit no optimization profile of its engine "
                             f"({reasons})")
        key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(request.inputs.items()))
        return rows, key

    def close(self, drain: bool = True) -> None:
        self.batcher.close(drain)


_CONFIG_TYPES = {"BOOL": "BOOL", "UINT8": "UINT8", "UINT16": "UINT16", "UINT32": "UINT32", "UINT64": "UINT64",
                 "INT8": "INT8", "INT16": "INT16", "INT32": "INT32", "INT64": "INT64", "FP16": "FP16",
                 "FP32": "FP32", "FP64": "FP64", "BF16": "BF16"}


def _dims(shape: tuple) -> list[int]:
    """Shape as the v2 protocol reports it: -1 for a dynamic dim."""
    return [d if isinstance(d, int) else -1 for d in shape]


def _batches(engine) -> bool:
    """Whether every input and output has a dynamic dim 0 that can carry a batch."""
    infos = [*engine.inputs, *engine.outputs]
    return bool(engine.inputs) and all(i.shape and not isinstance(i.shape[0], int) for i in infos)


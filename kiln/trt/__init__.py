"""TensorRT 10's Python API names over Kiln, so TensorRT code ports by changing one import::

    import kiln.trt as trt   # instead of: import tensorrt as trt

Covered: Logger, Builder, INetworkDefinition (parsed, or built with add_* as in kiln/trt/network.py), OnnxParser,
IBuilderConfig, IOptimizationProfile, Runtime, ICudaEngine, IExecutionContext, DataType, volume, nptype,
IProgressMonitor, ITimingCache, IProfiler, EngineInspector, IOutputAllocator, IDebugListener (docs/trt.md says
what differs). Buffers are passed as raw addresses, as in TensorRT: device pointers (``tensor.data_ptr()``,
cuda-python/pycuda allocations) on the GPU, host pointers (``array.ctypes.data``) on the CPU. The builder targets
the GPU when there is one, else the CPU.

Where each interface lives: this module holds the builder, config, parser, runtime, engine and context classes
(Builder, IBuilderConfig, OnnxParser, Runtime, ICudaEngine, IExecutionContext, Refitter, calibrators); each
other interface has a module of its own: types.py (Logger, DataType, Dims), network.py, layers.py
and layer_enums.py (the network API), debug_listener.py, output_allocator.py, profiler.py, progress.py,
timing_cache.py, inspector.py, plugin.py (``tensorrt.plugin``'s decorators) and pycuda.py.
"""
from __future__ import annotations

import builtins
import contextlib
import enum
import logging

import numpy as np
import torch

from .. import errors
from ..builder.builder import build as _build
from ..builder.config import BuilderConfig, Profile
from ..engine.buffers import wrap_address
from ..engine.runtime import Engine
from .types import (ILogger, Logger, DataType, Dims, volume, nptype, float32, float16, int8, int32, bool,  # noqa: A004
                    uint8, fp8, bfloat16, int64, Dims2, Dims3, Dims4, DimsHW, Weights, _TO_TRT)
from .layer_enums import (ActivationType, PoolingType, ScaleMode, ElementWiseOperation, GatherMode, UnaryOperation,
                          ReduceOperation, MatrixOperation)
from .layers import (ILayer, IConvolutionLayer, IDeconvolutionLayer, IPoolingLayer, IActivationLayer,
                     IElementWiseLayer, IMatrixMultiplyLayer, IShuffleLayer, ISoftMaxLayer, IReduceLayer, IConstantLayer,
                     IConcatenationLayer, ISliceLayer, IGatherLayer, IUnaryLayer, IScaleLayer, INormalizationLayer,
                     IIdentityLayer, ICastLayer, INonZeroLayer, IPluginV3Layer)
from .network import INetworkDefinition, ITensor
from .inspector import EngineInspector, LayerInformationFormat
from .profiler import IProfiler, run_profiled
from .progress import IProgressMonitor, monitor_progress
from .timing_cache import ITimingCache
from .output_allocator import IOutputAllocator, deliver
from .debug_listener import IDebugListener, TensorLocation, notify as _notify_debug

__all__ = ["Logger", "ILogger", "Builder", "NetworkDefinitionCreationFlag", "OnnxParser", "BuilderFlag",
           "MemoryPoolType", "IBuilderConfig", "IOptimizationProfile", "Runtime", "ICudaEngine", "IExecutionContext",
           "TensorIOMode", "DataType", "IHostMemory", "Dims", "volume", "nptype", "float32", "float16", "bfloat16",
           "int8", "int32", "int64", "bool", "uint8", "fp8", "CalibrationAlgoType", "IInt8Calibrator",
           "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "IInt8LegacyCalibrator",
           "Refitter", "OnnxParserRefitter", "HardwareCompatibilityLevel",
           # the network-definition API (kiln/trt/network.py, layers.py, layer_enums.py)
           "INetworkDefinition", "ITensor", "Weights", "Dims2", "Dims3", "Dims4", "DimsHW", "ActivationType",
           "PoolingType", "ScaleMode", "ElementWiseOperation", "GatherMode", "UnaryOperation", "ReduceOperation",
           "MatrixOperation", "ILayer", "IConvolutionLayer", "IDeconvolutionLayer", "IPoolingLayer", "IActivationLayer",
           "IElementWiseLayer", "IMatrixMultiplyLayer", "IShuffleLayer", "ISoftMaxLayer", "IReduceLayer",
           "IConstantLayer", "IConcatenationLayer", "ISliceLayer", "IGatherLayer", "IUnaryLayer", "IScaleLayer",
           "INormalizationLayer", "IIdentityLayer", "ICastLayer", "INonZeroLayer", "IPluginV3Layer",
           # builder and runtime interfaces (kiln/trt/progress.py, timing_cache.py, profiler.py, inspector.py,
           # output_allocator.py, debug_listener.py)
           "IProgressMonitor", "ITimingCache", "IProfiler", "EngineInspector", "LayerInformationFormat",
           "IOutputAllocator", "IDebugListener", "TensorLocation"]


class TensorIOMode(enum.IntEnum):
    """Whether an engine's I/O tensor is an INPUT or an OUTPUT (NONE: neither)."""

    NONE = 0
    INPUT = 1
    OUTPUT = 2


class IHostMemory(bytes):
    """Serialized engine bytes (supports the buffer protocol, like TensorRT's IHostMemory)."""

    @property
    def nbytes(self) -> int:
        """The size of the serialized engine in bytes."""
        return len(self)

    @property
    def dtype(self) -> DataType:
        """Always DataType.UINT8: the memory is raw bytes."""
        return DataType.UINT8


# --- network and parser --------------------------------------------------------------------------------
class NetworkDefinitionCreationFlag(enum.IntEnum):
    """Flags for ``Builder.create_network``, combined as a bit mask (1 << flag).

    Kiln: EXPLICIT_BATCH changes nothing (batch is always explicit); STRONGLY_TYPED keeps the model's own types
    (``BuilderConfig.strict_types``); PREFER_JIT_PYTHON_PLUGINS is what Kiln always does (a plugin runs through its
    impl); PREFER_AOT_PYTHON_PLUGINS makes the build fail, as Kiln does not launch an aot_impl's PTX.
    """

    EXPLICIT_BATCH = 0  # deprecated in TensorRT 10, where it is always on, as in Kiln
    STRONGLY_TYPED = 1  # keep the model's own types (BuilderConfig.strict_types)
    PREFER_JIT_PYTHON_PLUGINS = 2  # Kiln always runs a plugin's impl (kiln.trt.plugin)
    PREFER_AOT_PYTHON_PLUGINS = 3  # refused at build: Kiln does not launch an aot_impl's PTX


class ParserError:
    """One error of OnnxParser: ``desc()`` says what went wrong, ``node()`` the node's index (-1: none)."""

    def __init__(self, message: str, node: int = -1, code: int = 1):
        self._message, self._node, self._code = message, node, code

    def desc(self) -> str:
        return self._message

    def node(self) -> int:
        return self._node

    def code(self) -> int:
        return self._code

    def __str__(self) -> str:
        return self._message


class OnnxParser:
    """Parses an ONNX model into an INetworkDefinition. Errors are kept (``num_errors``, ``get_error``) and sent to
    the logger; nothing is raised.

    Kiln: an unsupported op is reported with the node's name and why; plugins registered through
    ``kiln.trt.plugin`` are found by their ONNX domain or TensorRT's ``plugin_namespace`` attribute.
    """

    def __init__(self, network: INetworkDefinition, logger: ILogger):
        self.network, self.logger = network, logger
        self._errors: list[ParserError] = []

    def parse(self, model: bytes, path: str | None = None) -> bool:
        """Parse serialized ONNX ``model`` bytes into the network; True on success. ``path``: the folder external
        weight files are read from. Clears the errors of an earlier parse."""
        from ..frontend.onnx import parse
        self._errors.clear()
        try:
            self.network.graph = parse(_with_plugin_domains(model), base_dir=path, registry=_plugins().registry())
        except errors.UnsupportedOpError as e:
            self._errors += [ParserError(f"node {n!r}: unsupported op {op} ({why})") for n, _, op, why in e.unsupported]
        except errors.KilnError as e:
            self._errors.append(ParserError(str(e)))
        for err in self._errors:
            self.logger.log(ILogger.ERROR, err.desc())
        return not self._errors

    def parse_from_file(self, path: str) -> bool:
        """Parse the ONNX file at ``path`` (external weights beside it); True on success, else the errors say why."""
        import os
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            self._errors = [ParserError(f"cannot read {path!r}: {e}")]
            self.logger.log(ILogger.ERROR, self._errors[0].desc())
            return False
        return self.parse(data, os.path.dirname(os.path.abspath(path)))

    @property
    def num_errors(self) -> int:
        """How many errors the last parse recorded."""
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        """The ``index``-th recorded error (``desc()`` says what went wrong)."""
        return self._errors[index]

    def clear_errors(self) -> None:
        """Forget the recorded errors."""
        self._errors.clear()


def _network_flag(network: INetworkDefinition, name: str) -> bool:
    return (int(network.flags or 0) >> int(NetworkDefinitionCreationFlag[name]) & 1) == 1


class _LogForwarder(logging.Handler):
    """Kiln's build log (the "kiln" logger) to the user's ILogger, at TensorRT's severities."""

    def __init__(self, logger: ILogger):
        super().__init__(logging.DEBUG)
        self.trt_logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        severity = (ILogger.ERROR if record.levelno >= logging.ERROR else ILogger.WARNING
                    if record.levelno >= logging.WARNING else ILogger.INFO if record.levelno >= logging.INFO
                    else ILogger.VERBOSE)
        try:
            self.trt_logger.log(severity, record.getMessage())
        except Exception:  # noqa: BLE001 - a user's logger that fails must not fail the build
            pass


@contextlib.contextmanager
def _forward_logs(logger: ILogger):
    kiln_log = logging.getLogger("kiln")
    handler, level = _LogForwarder(logger), kiln_log.level
    kiln_log.addHandler(handler)
    wants = getattr(logger, "min_severity", ILogger.VERBOSE)
    kiln_log.setLevel(logging.DEBUG if wants >= ILogger.VERBOSE else logging.INFO if wants >= ILogger.INFO
                      else logging.WARNING)
    try:
        yield
    finally:
        kiln_log.removeHandler(handler)
        kiln_log.setLevel(level)


def _plugins():
    """The plugins registered through kiln.trt.plugin's decorators (TensorRT's registry is per process)."""
    from .plugin import registered
    return registered()


def _with_plugin_domains(model):
    """The model's bytes, with TensorRT's plugin-node convention (op_type = plugin name, attribute
    plugin_namespace) rewritten to the ONNX one Kiln parses (domain = namespace)."""
    data = bytes(model)
    if not len(_plugins()) or b"plugin_namespace" not in data:
        return data
    import onnx
    from .plugin import rename_plugin_nodes
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception:  # noqa: BLE001 - not a model: the parser says so with its own message
        return data
    rename_plugin_nodes(proto)
    return proto.SerializeToString()


# --- builder ---------------------------------------------------------------------------------------------
class BuilderFlag(enum.IntEnum):
    """Builder options, set with ``IBuilderConfig.set_flag``; values are TensorRT 10's.

    Kiln honours FP16, INT8, FP8, BF16, TF32, INT4 (int4 weight-only GEMMs), REFIT and REFIT_IDENTICAL (a
    refittable engine), STRIP_PLAN (serialize without weights), DISABLE_TIMING_CACHE, and accepts a few that are
    always true or mean nothing here (STRICT_NANS, DIRECT_IO, OBEY/PREFER_PRECISION_CONSTRAINTS,
    VERSION_COMPATIBLE, GPU_FALLBACK, REJECT_EMPTY_ALGORITHMS, DISABLE_COMPILATION_CACHE). Any other flag is
    logged as an error when set and makes the build fail until it is cleared.
    """

    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4
    DISABLE_TIMING_CACHE = 5
    TF32 = 6
    SPARSE_WEIGHTS = 7
    SAFETY_SCOPE = 8
    OBEY_PRECISION_CONSTRAINTS = 9
    PREFER_PRECISION_CONSTRAINTS = 10
    DIRECT_IO = 11
    REJECT_EMPTY_ALGORITHMS = 12
    VERSION_COMPATIBLE = 13
    EXCLUDE_LEAN_RUNTIME = 14
    FP8 = 15
    ERROR_ON_TIMING_CACHE_MISS = 16
    BF16 = 17
    DISABLE_COMPILATION_CACHE = 18
    STRIP_PLAN = 19
    WEIGHTLESS = 19  # TensorRT's deprecated alias of STRIP_PLAN
    REFIT_IDENTICAL = 20
    WEIGHT_STREAMING = 21
    INT4 = 22
    REFIT_INDIVIDUAL = 23
    STRICT_NANS = 24
    MONITOR_MEMORY = 25
    FP4 = 26
    EDITABLE_TIMING_CACHE = 27
    DISTRIBUTIVE_INDEPENDENCE = 28


# What each flag Kiln accepts means here; any other flag is logged as an error at set_flag and fails the build.
_FLAG_MEANING = {
    BuilderFlag.FP16: "fp16 layers", BuilderFlag.INT8: "int8 layers", BuilderFlag.FP8: "fp8 layers",
    BuilderFlag.BF16: "bf16 layers", BuilderFlag.TF32: "TF32 float32 convolutions and matmuls (CUDA)",
    BuilderFlag.STRICT_NANS: "always so in Kiln: NaN and Inf propagate on every tactic",
    BuilderFlag.DISABLE_TIMING_CACHE: "the timing cache set with set_timing_cache is neither read nor written",
    BuilderFlag.GPU_FALLBACK: "no effect: there is no DLA, every layer runs on the GPU or CPU",
    BuilderFlag.OBEY_PRECISION_CONSTRAINTS: "always so in Kiln: a layer's precision is its layer_precisions entry",
    BuilderFlag.PREFER_PRECISION_CONSTRAINTS: "as OBEY: a layer's precision is its layer_precisions entry",
    BuilderFlag.DIRECT_IO: "always so in Kiln: I/O keeps the network's formats",
    BuilderFlag.REJECT_EMPTY_ALGORITHMS: "no effect: there is no algorithm selector",
    BuilderFlag.DISABLE_COMPILATION_CACHE: "no effect: kiln.trt keeps no compilation cache in the engine",
    BuilderFlag.REFIT: "a refittable engine (kiln.trt.Refitter)",
    BuilderFlag.INT4: "int4 weight-only MatMul/Gemm layers (BuilderConfig.int4_weights)",
    BuilderFlag.REFIT_IDENTICAL: "as REFIT: a Kiln refit computes every weight as a fresh build would",
    BuilderFlag.STRIP_PLAN: "serialize the plan alone; load with weights_from= (a refit from the ONNX model)",
    BuilderFlag.VERSION_COMPATIBLE: "always so in Kiln: an engine loads on another device, torch or Kiln of its "
                                    "format version",
}


class HardwareCompatibilityLevel(enum.IntEnum):
    """Accepted for TensorRT code: a Kiln engine loads on any device, replacing what does not apply there."""
    NONE = 0
    AMPERE_PLUS = 1
    SAME_COMPUTE_CAPABILITY = 2


class MemoryPoolType(enum.IntEnum):
    """The memory pools whose size ``IBuilderConfig.set_memory_pool_limit`` limits.

    Kiln: only WORKSPACE has an effect (``BuilderConfig.workspace_bytes``: a limit on the activation arena and
    scratch); the other limits are stored and reported back, nothing more.
    """

    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4
    TACTIC_SHARED_MEMORY = 5


class IOptimizationProfile:
    """The min, opt and max shapes of dynamic inputs; add it to a config with ``add_optimization_profile``
    (Kiln's ``Profile``)."""

    def __init__(self):
        self._shapes: dict[str, tuple] = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's names
        """Set the smallest, tuned-for and largest shape of input ``input``."""
        self._shapes[input] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, input: str):  # noqa: A002
        """[min, opt, max] of input ``input`` as Dims; KeyError when it was not set."""
        return [Dims(s) for s in self._shapes[input]]

    def _profile(self) -> Profile:
        return Profile.of(**self._shapes)


# --- INT8 calibrators (subclass one, implement get_batch; set config.int8_calibrator) ----------------------------
class CalibrationAlgoType(enum.IntEnum):
    """Which int8 calibration method a calibrator asks for.

    Kiln maps them to ``BuilderConfig.calibration_method``: ENTROPY_CALIBRATION -> "entropy",
    ENTROPY_CALIBRATION_2 -> "entropy2", MINMAX_CALIBRATION -> "minmax", LEGACY_CALIBRATION -> "percentile" at
    the calibrator's ``get_quantile()``.
    """

    LEGACY_CALIBRATION = 0
    ENTROPY_CALIBRATION = 1
    ENTROPY_CALIBRATION_2 = 2
    MINMAX_CALIBRATION = 3


_ALGO_METHOD = {CalibrationAlgoType.LEGACY_CALIBRATION: "percentile", CalibrationAlgoType.ENTROPY_CALIBRATION: "entropy",
                CalibrationAlgoType.ENTROPY_CALIBRATION_2: "entropy2",
                CalibrationAlgoType.MINMAX_CALIBRATION: "minmax"}


class IInt8Calibrator:
    """TensorRT's calibrator interface. ``get_batch(names)`` returns None when done, else one address (or
    array) per input; the cache methods let a second build skip the data (bytes in TensorRT's text format)."""

    algorithm = CalibrationAlgoType.ENTROPY_CALIBRATION_2

    def get_batch_size(self) -> int:
        """The number of samples per batch ``get_batch`` returns (1 by default)."""
        return 1

    def get_batch(self, names: list[str]):  # noqa: ARG002 - interface
        """The next calibration batch for the inputs ``names``: one device or host address (or one array) per name, in
        that order; None when the data is exhausted. Override it; this one returns None."""
        return None

    def read_calibration_cache(self):
        """Bytes of a calibration cache written earlier, to skip calibrating; None (the default) to calibrate."""
        return None

    def write_calibration_cache(self, cache) -> None:
        """Called with the calibration cache's bytes after calibrating, to be stored; the default does nothing."""
        pass

    def get_algorithm(self) -> CalibrationAlgoType:
        """The calibration method to use (the class's ``algorithm``)."""
        return self.algorithm


class IInt8EntropyCalibrator2(IInt8Calibrator):
    """A calibrator that picks scales by minimizing the KL divergence of the quantized histogram ("entropy2",
    Kiln's default method)."""

    algorithm = CalibrationAlgoType.ENTROPY_CALIBRATION_2


class IInt8EntropyCalibrator(IInt8Calibrator):
    """A calibrator that uses the older entropy method ("entropy")."""

    algorithm = CalibrationAlgoType.ENTROPY_CALIBRATION


class IInt8MinMaxCalibrator(IInt8Calibrator):
    """A calibrator whose scales cover the full observed range of each tensor ("minmax")."""

    algorithm = CalibrationAlgoType.MINMAX_CALIBRATION


class IInt8LegacyCalibrator(IInt8Calibrator):
    """Percentile calibration: ``get_quantile()`` (default 0.9999) of the magnitudes."""

    algorithm = CalibrationAlgoType.LEGACY_CALIBRATION

    def get_quantile(self) -> float:
        """The quantile of the absolute values a scale covers (0.9999 by default); override to change it."""
        return 0.9999


def _calibration_method(cal) -> str:
    if cal is None or not hasattr(cal, "get_algorithm"):
        return "entropy2"
    method = _ALGO_METHOD.get(CalibrationAlgoType(cal.get_algorithm()), "entropy2")
    if method == "percentile" and hasattr(cal, "get_quantile"):
        method = f"percentile:{float(cal.get_quantile()) * 100:g}"
    return method


class IBuilderConfig:
    """Build options for ``Builder.build_serialized_network``: flags, memory limits, optimization profiles, an int8
    calibrator, a timing cache and a progress monitor; turned into a Kiln ``BuilderConfig`` at build time.

    Kiln: builds for "cuda" when a GPU is present, else "cpu" (the ``device`` attribute); TF32 is set by default
    as in TensorRT; ``builder_optimization_level`` (0-5) becomes ``BuilderConfig.optimization_level``.
    """

    def __init__(self, logger: ILogger | None = None):
        self.logger = logger
        self._unsupported: dict[BuilderFlag, str] = {}  # flags set that Kiln cannot honour -> why
        self._flags = {BuilderFlag.TF32}  # TensorRT's default
        self._pools: dict[MemoryPoolType, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self.builder_optimization_level = 3
        self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE  # accepted (see the enum)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.int8_calibrator: IInt8Calibrator | None = None
        self.progress_monitor: IProgressMonitor | None = None
        self._timing_cache: ITimingCache | None = None

    def create_timing_cache(self, serialized_timing_cache) -> ITimingCache | None:
        """A timing cache from ``serialize()``'s bytes (b'' for an empty one); None, with the error logged, for
        bytes that are not a Kiln timing cache (TensorRT's own caches included)."""
        try:
            return ITimingCache.from_bytes(serialized_timing_cache)
        except errors.KilnError as e:
            if self.logger is not None:
                self.logger.log(ILogger.ERROR, str(e))
            return None

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: builtins.bool = False) -> builtins.bool:
        """Use ``cache`` in builds with this config; they add their new timings to it."""
        if cache is not None and not isinstance(cache, ITimingCache):
            raise errors.InputError(f"set_timing_cache: expected an ITimingCache, got {type(cache).__name__}")
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        """The timing cache set with ``set_timing_cache``, or None."""
        return self._timing_cache

    def set_flag(self, flag: BuilderFlag) -> None:
        """Set a builder flag. One Kiln does not support is logged as an error now, and the build fails with
        it (never silently ignored)."""
        flag = BuilderFlag(flag)
        self._flags.add(flag)
        if flag not in _FLAG_MEANING:
            why = f"BuilderFlag.{flag.name} is not supported by Kiln"
            self._unsupported[flag] = why
            if self.logger is not None:
                self.logger.log(ILogger.ERROR, f"{why}; the build will fail unless the flag is cleared")

    def clear_flag(self, flag: BuilderFlag) -> None:
        """Unset a builder flag (and forget the error of an unsupported one)."""
        self._flags.discard(BuilderFlag(flag))
        self._unsupported.pop(BuilderFlag(flag), None)

    @property
    def flags(self) -> int:
        """The flags as TensorRT's bit mask (1 << flag)."""
        return sum(1 << int(f) for f in self._flags)

    @flags.setter
    def flags(self, mask: int) -> None:
        for f in list(self._flags):
            self.clear_flag(f)
        for f in BuilderFlag:
            if int(mask) >> int(f) & 1:
                self.set_flag(f)

    def get_flag(self, flag: BuilderFlag) -> bool:
        """True when ``flag`` is set."""
        return BuilderFlag(flag) in self._flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        """Limit the memory pool ``pool`` to ``size`` bytes (Kiln honours only WORKSPACE; see MemoryPoolType)."""
        self._pools[MemoryPoolType(pool)] = int(size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        """The limit set for ``pool`` in bytes; 2**62 (no limit) when none was set."""
        return self._pools.get(MemoryPoolType(pool), 1 << 62)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        """Add an optimization profile to the build; returns its index."""
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        """How many optimization profiles were added."""
        return len(self._profiles)

    def _kiln(self, strongly_typed: bool = False) -> BuilderConfig:
        return BuilderConfig(device=self.device, fp16=BuilderFlag.FP16 in self._flags,
                             int8=BuilderFlag.INT8 in self._flags, fp8=BuilderFlag.FP8 in self._flags,
                             int8_calibrator=self.int8_calibrator,
                             calibration_method=_calibration_method(self.int8_calibrator),
                             bf16=BuilderFlag.BF16 in self._flags, tf32=BuilderFlag.TF32 in self._flags,
                             workspace_bytes=self._pools.get(MemoryPoolType.WORKSPACE),
                             profiles=tuple(p._profile() for p in self._profiles),
                             optimization_level=min(5, max(0, int(self.builder_optimization_level))),
                             strict_types=strongly_typed, int4_weights=BuilderFlag.INT4 in self._flags,
                             refittable=len({BuilderFlag.REFIT, BuilderFlag.REFIT_IDENTICAL} & self._flags) > 0)


class Builder:
    """Builds engines: makes networks, configs and optimization profiles, and turns a network and a config into a
    serialized engine. The ``logger`` receives Kiln's build log at TensorRT's severities."""

    def __init__(self, logger: ILogger):
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        """An empty network; ``flags`` is a NetworkDefinitionCreationFlag bit mask."""
        return INetworkDefinition(flags, self.logger)

    def create_builder_config(self) -> IBuilderConfig:
        """A new IBuilderConfig with TensorRT's defaults."""
        return IBuilderConfig(self.logger)

    def create_optimization_profile(self) -> IOptimizationProfile:
        """A new, empty IOptimizationProfile."""
        return IOptimizationProfile()

    @property
    def platform_has_fast_fp16(self) -> bool:
        """True when a CUDA GPU of compute capability 5.3 or later is present."""
        return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (5, 3)

    @property
    def platform_has_fast_int8(self) -> bool:
        """True when a CUDA GPU of compute capability 6.1 or later is present."""
        return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (6, 1)

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        """The engine as bytes, or None (with the error logged) if the build failed, as TensorRT does."""
        try:
            graph = network.graph
            if graph is None:
                raise errors.BuildError("network is empty: parse a model into it or add layers first")
            network.check()
            self._check(network, graph, config)
            kiln_config = config._kiln(_network_flag(network, "STRONGLY_TYPED"))
            if precisions := network.layer_precisions():
                kiln_config = kiln_config.replace(layer_precisions={**kiln_config.layer_precisions, **precisions})
            if getattr(self.logger, "min_severity", ILogger.VERBOSE) >= ILogger.INFO:  # the build summary at INFO
                kiln_config = kiln_config.replace(verbosity=1)
            cache = config._timing_cache if BuilderFlag.DISABLE_TIMING_CACHE not in config._flags else None
            progress = monitor_progress(config.progress_monitor)
            with _forward_logs(self.logger), (cache.as_file() if cache is not None
                                              else contextlib.nullcontext()) as cache_path:
                if cache_path is not None:
                    kiln_config = kiln_config.replace(timing_cache=cache_path)
                try:
                    engine = _build(graph, kiln_config, plugins=_plugins(), progress=progress,
                                    debug_tensors=network.debug_names())
                finally:
                    if progress is not None:
                        progress.close()
        except errors.KilnError as e:
            self.logger.log(ILogger.ERROR, str(e))
            return None
        return IHostMemory(engine.serialize(weights=BuilderFlag.STRIP_PLAN not in config._flags))

    @staticmethod
    def _check(network: INetworkDefinition, graph, config: IBuilderConfig) -> None:
        """TensorRT's refusals, before anything is built."""
        if config._unsupported:
            raise errors.BuildError("; ".join(config._unsupported.values()) + ": clear the flag(s) to build")
        if _network_flag(network, "PREFER_AOT_PYTHON_PLUGINS"):
            raise errors.BuildError("NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS: Kiln runs plugins "
                                    "through their impl and does not launch an aot_impl's PTX")
        from .plugin import missing_impl
        if missing := missing_impl(graph):
            raise errors.PluginError(f"plugin(s) {', '.join(missing)} have an aot_impl but no impl: Kiln runs "
                                     f"plugins through @kiln.trt.plugin.impl and does not launch PTX")
        dynamic = [v.name for v in graph.inputs
                   if getattr(v.type, "shape", None) is not None and not all(isinstance(d, int) for d in v.type.shape)]
        if dynamic and not config._profiles:
            raise errors.BuildError(f"Network has dynamic or shape inputs, but no optimization profile has been "
                                    f"defined (inputs {', '.join(dynamic)}): add one with "
                                    f"builder.create_optimization_profile() and config.add_optimization_profile()")

    def build_engine_with_config(self, network: INetworkDefinition, config: IBuilderConfig) -> "ICudaEngine | None":
        """Build and deserialize in one step: an ICudaEngine, or None with the error logged (TensorRT 8's API)."""
        data = self.build_serialized_network(network, config)
        return None if data is None else Runtime(self.logger).deserialize_cuda_engine(data)


# --- runtime ---------------------------------------------------------------------------------------------------
class Runtime:
    """Loads serialized engines (``deserialize_cuda_engine``); errors go to ``logger``."""

    def __init__(self, logger: ILogger):
        self.logger = logger

    def deserialize_cuda_engine(self, data) -> "ICudaEngine | None":
        """An ICudaEngine, or None (with the reason logged) for a bad or foreign engine, as TensorRT does."""
        try:
            return ICudaEngine(Engine.deserialize(bytes(data), plugins=_plugins()), self.logger)
        except errors.KilnError as e:
            self.logger.log(ILogger.ERROR, str(e))
            return None


class ICudaEngine:
    """A built engine: its I/O tensors, profiles and layers, and the contexts that run it. Wraps a Kiln ``Engine``
    (the ``engine`` attribute)."""

    def __init__(self, engine: Engine, logger: ILogger | None = None):
        self.engine = engine
        self.logger = logger  # the Runtime's: a context's refused calls are logged there, as in TensorRT
        self._io = [(i.name, TensorIOMode.INPUT, i) for i in engine.inputs] + \
                   [(o.name, TensorIOMode.OUTPUT, o) for o in engine.outputs]

    @property
    def num_io_tensors(self) -> int:
        """The number of inputs and outputs."""
        return len(self._io)

    @property
    def num_layers(self) -> int:
        """The number of layers the engine runs."""
        return self.engine.num_layers

    @property
    def num_optimization_profiles(self) -> int:
        """The number of optimization profiles (1 for an engine built without one)."""
        return max(1, len(self.engine.profiles))

    def get_tensor_name(self, index: int) -> str:
        """The name of I/O tensor ``index``: inputs first, then outputs."""
        return self._io[index][0]

    def _info(self, name: str):
        for n, mode, info in self._io:
            if n == name:
                return mode, info
        raise errors.InputError(f"no I/O tensor named {name!r}")

    def is_debug_tensor(self, name: str) -> builtins.bool:
        """True when ``name`` was marked as a debug tensor at build (``INetworkDefinition.mark_debug``)."""
        return name in self.engine.debug_names

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        """Whether tensor ``name`` is an input or an output; InputError for a name that is neither."""
        return self._info(name)[0]

    def get_tensor_shape(self, name: str) -> Dims:
        """The shape of I/O tensor ``name`` as built, -1 for each dynamic dimension."""
        return Dims(d if isinstance(d, int) else -1 for d in self._info(name)[1].shape)

    def get_tensor_dtype(self, name: str) -> DataType:
        """The DataType of I/O tensor ``name`` (FLOAT for a type TensorRT has no name for)."""
        return _TO_TRT.get(self._info(name)[1].dtype, DataType.FLOAT)

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        """[min, opt, max] of input ``name`` in profile ``profile_index``."""
        mode, info = self._info(name)
        if mode != TensorIOMode.INPUT:
            raise errors.InputError(f"{name!r} is an output; profiles give the shapes of inputs")
        if not self.engine.profiles:
            if all(isinstance(d, int) for d in info.shape):  # a static engine: its one implicit profile
                return [Dims(info.shape)] * 3
            raise errors.ShapeError(f"the engine has no optimization profile (input {name!r} is {list(info.shape)})")
        if not 0 <= int(profile_index) < len(self.engine.profiles):
            raise errors.InputError(f"profile index {profile_index} out of range: the engine has "
                                    f"{len(self.engine.profiles)} optimization profile(s)")
        p = self.engine.profiles[int(profile_index)]
        if name not in p.min:
            return [Dims(info.shape)] * 3  # fixed in the model: every profile has its shape
        return [Dims(p.min[name]), Dims(p.opt[name]), Dims(p.max[name])]

    # -- TensorRT 8's binding API (removed in TensorRT 10; kept for the samples and tutorials that use it).
    # A binding is an I/O tensor, by index (inputs first) or by name, as TensorRT 8 took both.
    def __iter__(self):
        return iter([name for name, _, _ in self._io])

    def __len__(self) -> int:
        return len(self._io)

    def __getitem__(self, key):
        """engine[index] -> binding name, engine[name] -> binding index (TensorRT 8)."""
        return self.get_binding_index(key) if isinstance(key, str) else self.get_binding_name(key)

    @property
    def num_bindings(self) -> int:
        """TensorRT 8: the number of I/O tensors."""
        return len(self._io)

    @property
    def max_batch_size(self) -> int:
        """TensorRT 8: always 1, since the batch is part of each tensor's shape."""
        return 1  # explicit batch: the batch is part of each binding's shape

    @property
    def has_implicit_batch_dimension(self) -> bool:
        """TensorRT 8: always False."""
        return False

    def _binding(self, binding) -> str:
        if isinstance(binding, str):
            self._info(binding)
            return binding
        if not 0 <= int(binding) < len(self._io):
            raise errors.InputError(f"binding index {binding} out of range: the engine has {len(self._io)} bindings")
        return self._io[int(binding)][0]

    def get_binding_name(self, index: int) -> str:
        """TensorRT 8: the name of binding ``index`` (inputs first, then outputs)."""
        return self._binding(int(index))

    def get_binding_index(self, name: str) -> int:
        """TensorRT 8: the index of the binding ``name``, -1 when there is none."""
        return next((i for i, (n, _, _) in enumerate(self._io) if n == name), -1)

    def binding_is_input(self, binding) -> builtins.bool:
        """TensorRT 8: True when the binding (by index or name) is an input."""
        return self.get_tensor_mode(self._binding(binding)) == TensorIOMode.INPUT

    def get_binding_shape(self, binding) -> Dims:
        """TensorRT 8: ``get_tensor_shape`` of a binding given by index or name."""
        return self.get_tensor_shape(self._binding(binding))

    def get_binding_dtype(self, binding) -> DataType:
        """TensorRT 8: ``get_tensor_dtype`` of a binding given by index or name."""
        return self.get_tensor_dtype(self._binding(binding))

    def get_profile_shape(self, profile_index: int, binding):
        """TensorRT 8: [min, opt, max] of an input binding in profile ``profile_index``."""
        return self.get_tensor_profile_shape(self._binding(binding), profile_index)

    def serialize(self) -> IHostMemory:
        """The engine as bytes, for ``Runtime.deserialize_cuda_engine`` or a file (Kiln's engine format)."""
        return IHostMemory(self.engine.serialize())

    def create_engine_inspector(self) -> EngineInspector:
        """An EngineInspector that describes this engine's layers."""
        return EngineInspector(self)

    def create_execution_context(self) -> "IExecutionContext":
        """A new IExecutionContext to run this engine."""
        return IExecutionContext(self)


class IExecutionContext:
    """Runs an engine on buffers given by address: set the dynamic input shapes and every tensor's address, then
    ``execute_async_v3`` (or ``execute_v2``). Set ``profiler`` to an IProfiler to get each layer's time."""

    def __init__(self, engine: ICudaEngine):
        self.engine = engine
        self._ctx = engine.engine.create_execution_context()
        self._shapes: dict[str, tuple] = {}
        self._addresses: dict[str, int] = {}
        self._out_shape_cache: dict[tuple, dict[str, tuple]] = {}
        self.profiler: IProfiler | None = None  # told each layer's time after each execute
        self._allocators: dict[str, IOutputAllocator] = {}
        self._debug_listener: IDebugListener | None = None
        self._debug_on: set[str] = set()  # debug tensors whose state is on (all off at first, as in TensorRT)
        self._stream = 0  # the stream handle of the execute in progress (given to the debug listener)

    def set_input_shape(self, name: str, shape) -> bool:
        """Set the shape of dynamic input ``name`` for the next runs; returns True."""
        self._ctx.set_input_shape(name, shape)
        self._shapes[name] = tuple(int(d) for d in shape)
        return True

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int = 0) -> bool:
        """Choose the optimization profile to start from; returns True.

        Kiln: the stream is not used and a run whose shapes fall outside that profile moves to one that holds them.
        """
        self._ctx.profile_index = profile_index
        return True

    @property
    def all_input_dimensions_specified(self) -> bool:
        """True when every input has a known shape (static, or set with ``set_input_shape``)."""
        return all(i.name in self._shapes or all(isinstance(d, int) for d in i.shape)
                   for i in self.engine.engine.inputs)

    def _input_shapes(self) -> dict[str, tuple]:
        out = {}
        for i in self.engine.engine.inputs:
            if i.name in self._shapes:
                out[i.name] = self._shapes[i.name]
            elif all(isinstance(d, int) for d in i.shape):
                out[i.name] = tuple(i.shape)
            else:
                raise errors.ShapeError(f"input {i.name!r} has dynamic dims {list(i.shape)}: call set_input_shape first")
        return out

    def get_tensor_shape(self, name: str) -> Dims:
        """The shape of tensor ``name`` for the input shapes set so far: -1 for an input's dynamic dims not set yet
        and for a data-dependent output's dims. An output's shape is inferred from the inputs', so it needs every
        dynamic input's shape set (ShapeError otherwise)."""
        mode, info = self.engine._info(name)
        if mode == TensorIOMode.INPUT:
            return Dims(self._input_shapes()[name]) if name in self._shapes or all(
                isinstance(d, int) for d in info.shape) else Dims(-1 if not isinstance(d, int) else d for d in info.shape)
        shape = self._output_shapes()[name]  # None: data-dependent, -1 where unknown as in TensorRT
        return Dims(shape if shape is not None else (d if isinstance(d, int) else -1 for d in info.shape))

    def _output_shapes(self) -> dict[str, tuple]:
        shapes = self._input_shapes()
        key = tuple(sorted(shapes.items()))
        if key not in self._out_shape_cache:
            from ..passes.propagate import propagate
            eng = self.engine.engine
            facts = propagate(eng.graph, shapes, eng.registry)
            out = {}
            for name, v in zip(eng.output_names, eng.graph.outputs):
                s = facts.shape(v)
                out[name] = tuple(s) if s is not None and all(isinstance(d, int) for d in s) else None
            self._out_shape_cache[key] = out
        return self._out_shape_cache[key]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        """Use the buffer at address ``memory`` (device memory for a GPU engine, host memory for a CPU one) for tensor
        ``name``; returns True."""
        self.engine._info(name)
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        """The address set for tensor ``name``, 0 when none was set."""
        return self._addresses.get(name, 0)

    def _run(self) -> None:
        eng = self.engine.engine
        shapes = self._input_shapes()
        missing = [i.name for i in eng.inputs if i.name not in self._addresses] + \
                  [o.name for o in eng.outputs if o.name not in self._addresses and o.name not in self._allocators]
        if missing:
            raise errors.InputError(f"no address set for tensor(s) {missing}: call set_tensor_address (or, for an "
                                    f"output, set_output_allocator) first")
        feed = {i.name: wrap_address(self._addresses[i.name], shapes[i.name], i.dtype, eng.device, f"input {i.name!r}")
                for i in eng.inputs}
        out_shapes = self._output_shapes()
        buffers = {}
        for o in eng.outputs:
            if o.name in self._allocators:
                continue
            if out_shapes[o.name] is None:
                raise errors.ShapeError(f"output {o.name!r} has a data-dependent shape: give it an IOutputAllocator "
                                        f"with context.set_output_allocator({o.name!r}, allocator)")
            buffers[o.name] = wrap_address(self._addresses[o.name], out_shapes[o.name], o.dtype, eng.device,
                                           f"output {o.name!r}")
        debug = None
        if self._debug_listener is not None and self._debug_on:
            listener, on, stream = self._debug_listener, set(self._debug_on), self._stream
            dtypes = {t.name: t.dtype for t in eng.debug_tensors}

            def debug(values):
                _notify_debug(listener, values, on, dtypes, stream)
        if self.profiler is not None:
            result = run_profiled(eng, feed, buffers, self.profiler, debug)
        else:
            result = self._ctx.infer(feed, outputs=buffers, debug=debug)
        dtypes = {o.name: o.dtype for o in eng.outputs}
        for name, allocator in self._allocators.items():
            self._addresses[name] = deliver(allocator, name, result[name], self._addresses.get(name, 0),
                                            dtypes[name], eng.device)

    def set_output_allocator(self, name: str, output_allocator: IOutputAllocator | None) -> builtins.bool:
        """Memory for output ``name`` from ``output_allocator`` once its shape is known (None: unset)."""
        if self.engine.get_tensor_mode(name) != TensorIOMode.OUTPUT:
            raise errors.InputError(f"{name!r} is an input: an output allocator serves an output")
        if output_allocator is None:
            self._allocators.pop(name, None)
        else:
            self._allocators[name] = output_allocator
        return True

    def get_output_allocator(self, name: str) -> IOutputAllocator | None:
        """The IOutputAllocator set for output ``name``, or None."""
        return self._allocators.get(name)

    # -- debug tensors (kiln/trt/debug_listener.py) -------------------------------------------------------
    def set_debug_listener(self, listener: IDebugListener | None) -> builtins.bool:
        """Call ``listener.process_debug_tensor`` for the debug tensors whose state is on, after each execute (None:
        no listener); returns True."""
        if listener is not None and not callable(getattr(listener, "process_debug_tensor", None)):
            raise errors.InputError(f"set_debug_listener: expected an IDebugListener, got {type(listener).__name__}")
        self._debug_listener = listener
        return True

    def get_debug_listener(self) -> IDebugListener | None:
        """The IDebugListener set with ``set_debug_listener``, or None."""
        return self._debug_listener

    @property
    def debug_listener(self) -> IDebugListener | None:
        """The IDebugListener (``set_debug_listener`` / ``get_debug_listener`` as a property)."""
        return self._debug_listener

    @debug_listener.setter
    def debug_listener(self, listener: IDebugListener | None) -> None:
        self.set_debug_listener(listener)

    def set_tensor_debug_state(self, name: str, flag: builtins.bool) -> builtins.bool:
        """Turn the debug state of debug tensor ``name`` on or off (off by default); False, with the error logged to
        the Runtime's logger, for a name that was not marked as a debug tensor at build, as in TensorRT."""
        if not self.engine.is_debug_tensor(name):
            if self.engine.logger is not None:
                self.engine.logger.log(ILogger.ERROR, f"set_tensor_debug_state: {name!r} is not a debug tensor of "
                                                      f"this engine (mark it with network.mark_debug at build)")
            return False
        if flag:
            self._debug_on.add(name)
        else:
            self._debug_on.discard(name)
        return True

    def get_debug_state(self, name: str) -> builtins.bool:
        """True when ``name`` is a debug tensor whose debug state is on (False for any other name)."""
        return name in self._debug_on

    def set_all_tensors_debug_state(self, flag: builtins.bool) -> builtins.bool:
        """Turn the debug state of every debug tensor of the engine on or off; returns True."""
        self._debug_on = set(self.engine.engine.debug_names) if flag else set()
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        """Enqueue on the caller's CUDA stream (by handle); on the CPU the work is done on return."""
        self._stream = int(stream_handle or 0)
        try:
            if self.engine.engine.device.type == "cuda":
                stream = torch.cuda.ExternalStream(int(stream_handle)) if stream_handle else \
                    torch.cuda.current_stream()
                with torch.cuda.stream(stream):
                    self._run()
            else:
                self._run()
        finally:
            self._stream = 0
        return True

    # -- TensorRT 8's binding API ------------------------------------------------------------------------
    def set_binding_shape(self, binding, shape) -> builtins.bool:
        """TensorRT 8: ``set_input_shape`` for a binding given by index or name."""
        return self.set_input_shape(self.engine._binding(binding), shape)

    def get_binding_shape(self, binding) -> Dims:
        """TensorRT 8: ``get_tensor_shape`` for a binding given by index or name."""
        return self.get_tensor_shape(self.engine._binding(binding))

    @property
    def all_binding_shapes_specified(self) -> builtins.bool:
        """TensorRT 8: ``all_input_dimensions_specified``."""
        return self.all_input_dimensions_specified

    @property
    def active_optimization_profile(self) -> int:
        """The index of the optimization profile the context uses now."""
        return int(getattr(self._ctx, "profile_index", 0) or 0)

    def execute_async_v2(self, bindings: list[int], stream_handle: int = 0) -> builtins.bool:
        """TensorRT 8: enqueue with device addresses in binding order on the stream ``stream_handle``."""
        for i, ptr in enumerate(bindings):
            self.set_tensor_address(self.engine.get_tensor_name(i), ptr)
        return self.execute_async_v3(stream_handle)

    def execute_v2(self, bindings: list[int]) -> bool:
        """Run synchronously with addresses given in I/O tensor order."""
        for i, ptr in enumerate(bindings):
            self.set_tensor_address(self.engine.get_tensor_name(i), ptr)
        self._run()
        if self.engine.engine.device.type == "cuda":
            torch.cuda.synchronize()
        return True



# --- refit --------------------------------------------------------------------------------------------------
class Refitter:
    """TensorRT's IRefitter over kiln.Refitter: weights by their ONNX initializer names, for an engine built
    with BuilderFlag.REFIT. Failures return False with the reason logged, as in TensorRT."""

    def __init__(self, engine: ICudaEngine, logger: ILogger):
        from ..builder.refitter import Refitter as _Refitter
        self.logger = logger
        self._refitter = _Refitter(engine.engine)

    def _try(self, fn) -> bool:
        try:
            fn()
            return True
        except errors.KilnError as e:
            self.logger.log(ILogger.ERROR, str(e))
            return False

    def set_named_weights(self, name: str, weights) -> bool:
        """Set new values (numpy or torch) for the ONNX initializer ``name``, of its dtype and shape; False with the
        error logged when that fails. Applied by ``refit_cuda_engine``."""
        return self._try(lambda: self._refitter.set_named_weights(name, weights))

    def get_named_weights(self, name: str) -> np.ndarray:
        """The current values of the initializer ``name`` as a numpy array."""
        return self._refitter.get_named_weights(name).numpy()

    def get_missing_weights(self) -> list[str]:
        """Weights that must be set before a refit: always none in Kiln, as a weight not set keeps its value."""
        return self._refitter.get_missing_weights()

    def get_all_weights(self) -> list[str]:
        """The names of every initializer that ``set_named_weights`` accepts."""
        return self._refitter.get_all_weights()

    def refit_cuda_engine(self) -> bool:
        """Give the engine the weights set so far; False with the error logged (the engine unchanged) when they do not
        fit it."""
        return self._try(self._refitter.refit)


class OnnxParserRefitter:
    """TensorRT's nvonnxparser.OnnxParserRefitter: every weight of a Refitter from an ONNX file."""

    def __init__(self, refitter: Refitter, logger: ILogger):
        self.refitter, self.logger = refitter, logger

    def refit_from_file(self, path: str) -> bool:
        """Set every weight from the ONNX file at ``path`` (a model of the same architecture); False with the error
        logged when it does not match. Then call the refitter's ``refit_cuda_engine``."""
        return self.refitter._try(lambda: self.refitter._refitter.set_weights_from_onnx(path))

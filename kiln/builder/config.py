"""BuilderConfig: everything that decides what engine a build produces, in one frozen object."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..engine.profile import Profile  # the engine's type: the header stores profiles
from ..engine.spec import check_device

__all__ = ["BuilderConfig", "Profile"]


@dataclass(frozen=True)
class BuilderConfig:
    """How to build an engine. Passed down explicitly; nothing reads globals or environment variables.
    ``kiln.build(model, config)``, or its fields as keywords: ``kiln.build(model, fp16=True)``.

    Attributes:
        device: "cpu" (the default, also without a GPU), "cuda" or "cuda:N": the engine is built and tuned for it.
        fp16: allow float16 layers besides float32 (held to ``accuracy_target``).
        bf16: allow bfloat16 layers; "auto": where the device computes bf16 natively (CPU AVX512-BF16/AMX, GPU
            compute capability 8.0+), as OpenVINO does, else off (the report says which).
        tf32: let float32 convolutions and matmuls use TF32 on CUDA (faster, ~1e-3 relative error); off by
            default, as in onnxruntime.
        int8: allow int8 layers (needs ``int8_calibrator``, ``calibration_cache``, Q/DQ nodes in the model, or
            ``int8_activations="dynamic"``).
        fp8: allow fp8 (e4m3) layers, calibrated as int8 (GPU).
        int4_weights: INT4 weight-only quantization: every MatMul/Gemm with a constant weight becomes
            com.microsoft::MatMulNBits (4-bit weights, one scale per block, dequantized where the product is
            computed); for batch-1 GPU GEMMs, where reading weights dominates. Held to accuracy_target as int8
            is (default cosine 0.99 and 99% of top-1 decisions): layers that make the model miss it keep their
            float weight, largest error first; the report says which.
        int4_block_size: weights per int4 block along K (a power of two from 16; 32 by default).
        workspace_bytes: limit on the activation arena and scratch; the build fails when the plan needs more.
            None: no limit.
        profiles: optimization profiles (``Profile.of(x=(min, opt, max))``): the shapes the engine accepts and
            is tuned for (opt). Without one, dynamic dims stay unbounded and their layers are not tuned.
        optimization_level: 0 (no graph optimization) to 5 (the widest tactic search); 3 by default.
        verbosity: 0 quiet, 1 info logs (the build summary), 2 the graph after each pass.
        timing_cache: a JSON file of tactic timings, read and then written with new entries (each hit is
            re-checked once: a wrong cache costs time, never results).
        tuning_budget_s: a wall-clock limit for tactic tuning; layers left when it runs out keep their default.
        tactic_replay: a ``kiln.tune.export_choices`` file: take its choices, time nothing.
        layer_threads: on the CPU (opt level 2+, more than one thread), time each layer on one thread and on all,
            and run the layers one thread serves clearly better on one (kiln/tune/layer_threads.py); False: every
            layer uses the run's thread setting.
        channels_last: run convolutions in NHWC; None lets the layout pass decide (2-D conv networks do).
        cuda_graphs: replay CUDA graphs per input shape on the GPU.
        refittable: keep the ONNX graph and its initializers in the engine so ``kiln.Refitter`` can give it new
            weights by their ONNX names without a rebuild (TensorRT's REFIT; the file grows by the initializers
            a pass changed).
        strict_types: keep the model's own types, no reduced precision (TensorRT's strongly typed mode).
        onnxruntime_fallback: run a node no Kiln kernel or plugin implements through onnxruntime on the host
            (listed in the report) instead of refusing the model; the engine then needs onnxruntime to run.
        layer_precisions: per layer (name, glob or op type) -> "fp32", "fp16", "bf16", "int8" or "fp8".
        int8_calibrator: calibration data: a folder of .npz batches, an iterable of input dicts, or an object
            with ``get_batch()`` (TensorRT's calibrators).
        calibration_method: "minmax", "entropy", "entropy2" (default) or "percentile[:P]".
        int8_smoothing: SmoothQuant alpha (e.g. 0.5) for int8 GEMM inputs; 0 turns it off.
        int8_activations: "static" (calibrated scales) or "dynamic" (GEMM inputs get per-row scales at run
            time; no calibration needed).
        calibration_cache: a file read when it exists (no data needed) and written after calibrating.
        accuracy_target: reduced precision is measured against float32 and held to this target by keeping the
            most sensitive layers in higher precision (reported): {"min_cosine": 0.99} and/or
            {"max_rel_error": 0.05}; "default" a target per precision (kiln.quant.accuracy.DEFAULT_TARGETS);
            None: no check.
        validation_data: the inputs ``accuracy_target`` is measured on (default: held-out calibration batches,
            else a generated sample).
    """

    device: str = "cpu"
    fp16: bool = False
    bf16: bool | str = False
    tf32: bool = False
    int8: bool = False
    fp8: bool = False
    int4_weights: bool = False
    int4_block_size: int = 32
    workspace_bytes: int | None = None
    profiles: tuple[Profile, ...] = ()
    optimization_level: int = 3
    verbosity: int = 0
    timing_cache: str | None = None
    tuning_budget_s: float | None = None
    tactic_replay: str | None = None
    layer_threads: bool = True
    channels_last: bool | None = None
    cuda_graphs: bool = True
    refittable: bool = False
    strict_types: bool = False
    onnxruntime_fallback: bool = False
    layer_precisions: dict[str, str] = field(default_factory=dict)
    int8_calibrator: Any = field(default=None, compare=False)
    calibration_method: str = "entropy2"
    int8_smoothing: float = 0.0
    int8_activations: str = "static"
    calibration_cache: str | None = None
    accuracy_target: dict | str | None = "default"
    validation_data: Any = field(default=None, compare=False)

    def __post_init__(self):
        check_device(self.device)
        if not isinstance(self.refittable, bool):
            raise ValueError(f"refittable must be True or False, got {self.refittable!r}")
        if self.bf16 not in (True, False, "auto"):
            raise ValueError(f"bf16 must be True, False or 'auto', got {self.bf16!r}")
        if self.int4_block_size < 16 or self.int4_block_size & (self.int4_block_size - 1):
            raise ValueError(f"int4_block_size must be a power of two >= 16, got {self.int4_block_size}")
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"optimization_level must be 0..5, got {self.optimization_level}")
        for p in self.profiles:
            p.validate()
        if self.tuning_budget_s is not None and not self.tuning_budget_s >= 0:
            raise ValueError(f"tuning_budget_s must be >= 0 seconds or None, got {self.tuning_budget_s}")
        from ..quant.config_check import check_quant_fields
        check_quant_fields(self)

    def resolve_auto(self) -> tuple["BuilderConfig", str | None]:
        """This config with bf16="auto" decided for its device, and a note saying what was chosen and why."""
        if self.bf16 != "auto":
            return self, None
        from ..engine.device_info import native_bf16
        native, why = native_bf16(self.device)
        note = (f"bf16='auto': bf16 layers on ({why}), held to the accuracy target" if native else
                f"bf16='auto': float32 only ({why})")
        return self.replace(bf16=native), note

    def replace(self, **changes) -> "BuilderConfig":
        """A copy of this config with the given fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def is_cuda(self) -> bool:
        """True when the config builds for a CUDA device ("cuda" or "cuda:N")."""
        return self.device.startswith("cuda")

    def to_json(self) -> dict:
        """This config as plain JSON data (what the engine header stores); calibration and validation data are not
        stored, only named when they were a path."""
        d = dataclasses.asdict(dataclasses.replace(self, int8_calibrator=None, validation_data=None))
        for k in ("int8_calibrator", "validation_data"):  # data is not stored; a folder path is named
            d[k] = str(getattr(self, k)) if isinstance(getattr(self, k), (str, bytes)) else None
        d["profiles"] = [p.to_json() for p in self.profiles]
        return d

    @staticmethod
    def from_json(d: dict) -> "BuilderConfig":
        """The config ``to_json`` wrote; keys this version of Kiln does not know are ignored."""
        d = dict(d)
        d["profiles"] = tuple(Profile.from_json(p) for p in d.get("profiles", ()))
        known = {f.name for f in dataclasses.fields(BuilderConfig)}
        return BuilderConfig(**{k: v for k, v in d.items() if k in known})

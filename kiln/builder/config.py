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
    """How to build an engine. Passed down explicitly; nothing reads globals or environment variables."""

    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    fp16: bool = False
    bf16: bool | str = False  # "auto": bf16 where the device computes it natively (as OpenVINO does), else off
    tf32: bool = False  # let float32 convolutions/matmuls run in TF32 on CUDA (faster, ~1e-3 relative error)
    int8: bool = False
    fp8: bool = False
    workspace_bytes: int | None = None  # limit for the activation arena + scratch; None = no limit
    profiles: tuple[Profile, ...] = ()
    optimization_level: int = 3  # 0: no graph optimization ... 5: widest tactic search
    verbosity: int = 0  # 0 quiet, 1 info, 2 dump the graph after each pass
    timing_cache: str | None = None  # JSON file of tactic timings: read, then written with new entries
    tuning_budget_s: float | None = None  # wall-clock limit for tactic tuning; later layers keep their default
    tactic_replay: str | None = None  # a kiln.tune.export_choices file: take its choices, time nothing
    channels_last: bool | None = None  # None: the layout pass decides (2-D convolution networks run NHWC)
    cuda_graphs: bool = True
    # Keep the ONNX graph and its initializers in the engine, so kiln.Refitter can give it new weights by their
    # ONNX names without a rebuild (TensorRT's REFIT; the file grows by the initializers a pass changed).
    refittable: bool = False
    strict_types: bool = False  # keep the model's own types (TensorRT's strongly typed mode)
    # run a node no Kiln kernel or plugin implements through onnxruntime on the host (listed in the report)
    # instead of refusing the model; needs onnxruntime wherever the engine runs
    onnxruntime_fallback: bool = False
    # Reduced precision per layer and INT8/FP8 (kiln.quant): layer name / glob / op type -> fp32|fp16|bf16|int8|fp8
    layer_precisions: dict[str, str] = field(default_factory=dict)
    int8_calibrator: Any = field(default=None, compare=False)  # folder, iterable of input dicts, or get_batch()
    calibration_method: str = "entropy2"  # minmax | entropy | entropy2 | percentile[:P]
    int8_smoothing: float = 0.0  # SmoothQuant alpha (e.g. 0.5) for INT8 GEMM inputs; 0: off
    int8_activations: str = "static"  # "dynamic": GEMM inputs get per-row scales at run time (no calibration)
    calibration_cache: str | None = None  # read when it exists (no data needed); written after calibrating
    # Reduced precision (fp16/bf16/int8/fp8) is measured against float32 and held to this target by keeping
    # the most sensitive layers in higher precision (reported): {"min_cosine": 0.99} and/or
    # {"max_rel_error": 0.05}; "default": a target per precision (kiln.quant.accuracy.DEFAULT_TARGETS);
    # None: no check.
    accuracy_target: dict | str | None = "default"
    validation_data: Any = field(default=None, compare=False)  # for accuracy_target; default: calibration data

    def __post_init__(self):
        check_device(self.device)
        if not isinstance(self.refittable, bool):
            raise ValueError(f"refittable must be True or False, got {self.refittable!r}")
        if self.bf16 not in (True, False, "auto"):
            raise ValueError(f"bf16 must be True, False or 'auto', got {self.bf16!r}")
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
        return dataclasses.replace(self, **changes)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def to_json(self) -> dict:
        d = dataclasses.asdict(dataclasses.replace(self, int8_calibrator=None, validation_data=None))
        for k in ("int8_calibrator", "validation_data"):  # data is not stored; a folder path is named
            d[k] = str(getattr(self, k)) if isinstance(getattr(self, k), (str, bytes)) else None
        d["profiles"] = [p.to_json() for p in self.profiles]
        return d

    @staticmethod
    def from_json(d: dict) -> "BuilderConfig":
        d = dict(d)
        d["profiles"] = tuple(Profile.from_json(p) for p in d.get("profiles", ()))
        known = {f.name for f in dataclasses.fields(BuilderConfig)}
        return BuilderConfig(**{k: v for k, v in d.items() if k in known})

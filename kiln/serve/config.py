"""A model's serving settings, read from Triton's own ``config.pbtxt`` (protobuf text of Triton's ModelConfig,
parsed by protobuf with the message types that tritonclient ships), so a Triton user's file works unchanged.

Fields Kiln reads; everything else in the file is accepted and ignored (listed by ``ignored_fields``):
  max_batch_size                       0: the model does not batch; absent: the engine's profile max
  dynamic_batching { preferred_batch_size, max_queue_delay_microseconds,
                     default_queue_policy { max_queue_size, default_timeout_microseconds } }
                                       present: requests are merged; absent: each request runs alone
  instance_group [{ count }]           execution contexts (one worker thread each) per loaded version
  version_policy { latest | all | specific }
  input [{ name, dims }]               dims (without the batch dim) to build an ONNX model whose
                                       non-batch dims are dynamic
  parameters { key: "precision" value { string_value: "fp16" } }   fp32 | fp16 | bf16, for ONNX builds
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelFormatError

CONFIG_FILE = "config.pbtxt"
PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_MAX_QUEUE_SIZE = 256      # Triton's 0 means unbounded; Kiln always bounds its queues
DEFAULT_MAX_BATCH_SIZE = 8        # an ONNX model with a dynamic batch dim and no max_batch_size is built for 1..8
_READ = {"name", "max_batch_size", "dynamic_batching", "instance_group", "version_policy", "input", "output",
         "parameters", "platform", "backend"}


@dataclass(frozen=True)
class ModelSettings:
    name: str
    max_batch_size: int | None = None          # None: from the engine's profile
    batching: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    default_timeout_s: float | None = None
    instance_count: int | None = None           # None: 1 on the CPU, 2 on a GPU
    precision: str = "fp32"
    version_policy: tuple = ("latest", 1)       # ("latest", n) | ("all",) | ("specific", (1, 3))
    input_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)
    proto: object = None                         # the parsed ModelConfig, for the /config endpoint
    ignored_fields: tuple[str, ...] = ()


def read_settings(model_dir: Path) -> ModelSettings:
    """The settings of one model folder; defaults when it has no config.pbtxt."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    name = model_dir.name
    proto = model_config_pb2.ModelConfig()
    path = model_dir / CONFIG_FILE
    if path.is_file():
        try:
            text_format.Parse(path.read_text(), proto)
        except (text_format.ParseError, UnicodeDecodeError) as e:
            raise ModelFormatError(f"{path}: {e}") from None
    if proto.name and proto.name != name:
        raise ModelFormatError(f"{path}: name {proto.name!r} differs from its folder {name!r}")
    proto.name = name
    return _settings_from(proto, path)


def _settings_from(proto, path: Path) -> ModelSettings:
    present = {f.name for f, _ in proto.ListFields()}
    db = proto.dynamic_batching
    queue = db.default_queue_policy
    if proto.max_batch_size < 0:
        raise ModelFormatError(f"{path}: max_batch_size must be >= 0, got {proto.max_batch_size}")
    preferred = tuple(sorted(set(db.preferred_batch_size)))
    if "max_batch_size" in present and any(p < 1 or p > proto.max_batch_size for p in preferred):
        raise ModelFormatError(f"{path}: preferred_batch_size {list(preferred)} must lie in 1..max_batch_size "
                               f"({proto.max_batch_size})")
    counts = [g.count for g in proto.instance_group if g.count > 0]
    precision = proto.parameters["precision"].string_value.lower() if "precision" in proto.parameters else "fp32"
    if precision not in PRECISIONS:
        raise ModelFormatError(f"{path}: parameter precision must be one of {', '.join(PRECISIONS)}, "
                               f"got {precision!r}")
    return ModelSettings(
        name=proto.name,
        max_batch_size=proto.max_batch_size if "max_batch_size" in present else None,
        batching=proto.HasField("dynamic_batching"),
        preferred_batch_sizes=preferred,
        max_queue_delay_s=db.max_queue_delay_microseconds / 1e6,
        max_queue_size=queue.max_queue_size or DEFAULT_MAX_QUEUE_SIZE,
        default_timeout_s=queue.default_timeout_microseconds / 1e6 or None,
        instance_count=sum(counts) if counts else None,
        precision=precision,
        version_policy=_version_policy(proto),
        input_dims={i.name: tuple(i.dims) for i in proto.input if i.dims},
        proto=proto,
        ignored_fields=tuple(sorted(present - _READ)),
    )


def _version_policy(proto) -> tuple:
    which = proto.version_policy.WhichOneof("policy_choice")
    if which == "all":
        return ("all",)
    if which == "specific":
        return ("specific", tuple(sorted(proto.version_policy.specific.versions)))
    return ("latest", max(proto.version_policy.latest.num_versions, 1))


def select_versions(policy: tuple, available: list[int]) -> list[int]:
    """The versions a policy serves, out of those present on disk (Triton's default: the latest one)."""
    if policy[0] == "all":
        return sorted(available)
    if policy[0] == "specific":
        return [v for v in sorted(available) if v in policy[1]]
    return sorted(available)[-policy[1]:]

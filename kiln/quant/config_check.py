"""Validation of BuilderConfig's quantization fields, run when a config is made (so mistakes fail early)."""
from __future__ import annotations


def check_quant_fields(config) -> None:
    from .accuracy import AccuracyTarget
    from .calibrators import parse_method
    from .layer_precision import validate
    if not isinstance(config.layer_precisions, dict):
        raise ValueError(f"layer_precisions must be a dict of layer name / op type -> precision, "
                         f"got {type(config.layer_precisions).__name__}")
    validate(config.layer_precisions)
    parse_method(config.calibration_method)
    if config.int8_activations not in ("static", "dynamic"):
        raise ValueError(f"int8_activations must be 'static' or 'dynamic', got {config.int8_activations!r}")
    if config.accuracy_target is not None and config.accuracy_target != "default":
        AccuracyTarget.parse(config.accuracy_target)

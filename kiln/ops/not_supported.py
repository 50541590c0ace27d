"""Standard-domain ops Kiln leaves out on purpose, each with its reason (shown in UnsupportedOpError)."""

_STRING = "string tensors are not supported: Kiln's kernels run on torch tensors, which hold no strings"
_RANDOM = "random ops are left out: an inference engine's outputs must be deterministic"
_TRAINING = "training-only op (ai.onnx.preview.training); Kiln is an inference engine"

NOT_SUPPORTED: dict[str, str] = {
    "StringConcat": _STRING,
    "StringNormalizer": _STRING,
    "StringSplit": _STRING,
    "RegexFullMatch": _STRING,
    "TfIdfVectorizer": "works on token n-grams of string or integer text features; left out with the string ops",
    "ImageDecoder": "decodes encoded image bytes (JPEG/PNG); an image codec is outside an inference engine's scope",
    "RandomNormal": _RANDOM,
    "RandomNormalLike": _RANDOM,
    "RandomUniform": _RANDOM,
    "RandomUniformLike": _RANDOM,
    "Multinomial": _RANDOM,
    "Bernoulli": _RANDOM,
    "Adagrad": _TRAINING,
    "Adam": _TRAINING,
    "Momentum": _TRAINING,
    "Gradient": _TRAINING,
}

"""The curated public surface: kiln.__all__ is exactly what users get, every name resolves, and every error
Kiln raises on purpose is a KilnError."""
import kiln

PUBLIC = {
    "__version__", "parse", "set_threads", "interpret", "build", "BuilderConfig", "Refitter", "Profile", "Engine", "ExecutionContext",
    "Graph", "Node", "Value", "DType", "TensorType", "SequenceType", "OptionalType",
    "KilnError", "ModelFormatError", "GraphError", "UnsupportedOpError", "InputError", "ShapeError", "KernelError",
    "EngineFormatError", "DeviceMismatchError", "BuildError", "PluginError", "ModelMismatchError",
}


def test_public_names_are_listed_once_and_resolve():
    assert set(kiln.__all__) == PUBLIC and len(kiln.__all__) == len(PUBLIC)
    for name in kiln.__all__:
        assert getattr(kiln, name) is not None


def test_error_hierarchy():
    errors = [getattr(kiln, n) for n in PUBLIC if n.endswith("Error")]
    assert all(issubclass(e, kiln.KilnError) for e in errors)
    assert issubclass(kiln.KilnError, Exception)


def test_trt_module_names():
    import kiln.trt as trt
    for name in ("Logger", "Builder", "OnnxParser", "Runtime", "BuilderFlag", "MemoryPoolType",
                 "NetworkDefinitionCreationFlag", "TensorIOMode", "volume", "nptype", "IInt8EntropyCalibrator2",
                 "IInt8MinMaxCalibrator", "Refitter"):
        assert hasattr(trt, name), name


def test_no_function_shadows_a_package():
    """``kiln.build`` (the function) once shadowed the package of the same name: ``import kiln.build.report``
    failed. The builder's modules live in kiln.builder."""
    import importlib
    import pkgutil

    import kiln
    report = importlib.import_module("kiln.builder.report")
    assert callable(kiln.build) and hasattr(report, "BuildReport")
    packages = {m.name for m in pkgutil.iter_modules(kiln.__path__) if m.ispkg}
    assert not packages & set(dir(kiln)) - {p for p in packages if isinstance(getattr(kiln, p), type(kiln))}


def test_every_builder_config_field_is_documented():
    """help(kiln.BuilderConfig) documents every field (its Attributes section names each one)."""
    import dataclasses
    doc = kiln.BuilderConfig.__doc__
    attributes = doc[doc.index("Attributes:"):]
    missing = [f.name for f in dataclasses.fields(kiln.BuilderConfig) if f"\n        {f.name}: " not in attributes]
    assert not missing, f"BuilderConfig fields without a line in its docstring: {missing}"

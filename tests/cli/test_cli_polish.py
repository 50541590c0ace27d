"""The everyday CLI's rough edges (issue 22): each test here failed on the main before the fix."""
import subprocess
import sys

from cli_support import kiln


def test_did_you_mean_for_subcommands_and_flags(work):
    d, _ = work
    p = kiln("biuld", "tiny.onnx", cwd=d, check=2)
    assert "did you mean build?" in p.stderr
    p = kiln("build", "tiny.onnx", "-o", "x.engine", "--fp61", cwd=d, check=2)
    assert "did you mean --fp16?" in p.stderr
    p = kiln("exec", "--onnx=tiny.onnx", "--saveEngin=x.engine", cwd=d, check=1)
    assert "did you mean --saveEngine?" in p.stderr


def test_compare_exit_codes_tell_differ_from_failed(work, tmp_path):
    d, _ = work
    p = kiln("compare", "tiny.onnx", "--fp16", "--atol", "0", "--rtol", "0", "--shapes", "x:2x3x8x8",
             "--device", "cpu", cwd=d)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "FAIL" in p.stdout
    (tmp_path / "other.onnx").write_bytes(b"not a model")
    p = kiln("compare", str(tmp_path / "other.onnx"), "tiny.engine", cwd=d)
    assert p.returncode == 1


def test_compare_with_an_engine_of_another_model(work, tmp_path):
    d, _ = work
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["a"], ["b"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")
    p = kiln("compare", str(tmp_path / "relu.onnx"), "tiny.engine", cwd=d, check=1)
    assert "was not built from" in p.stderr and "internal error" not in p.stderr


def test_unwritable_output_fails_before_the_build(work):
    d, _ = work
    p = kiln("build", "tiny.onnx", "-o", "no/such/folder/x.engine", cwd=d, check=1)
    assert "folder 'no/such/folder' does not exist" in p.stderr and "built" not in p.stdout


def test_build_flags_with_an_engine_file_are_refused(work):
    d, _ = work
    p = kiln("run", "tiny.engine", "--fp16", "--opt-level", "5", cwd=d, check=1)
    assert "--fp16, --opt-level only apply when building from an ONNX model" in p.stderr


def test_version_does_not_import_torch():
    code = "import sys; from kiln.cli.main import main; main(['--version']); assert 'torch' not in sys.modules"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("kiln "), p.stderr


def test_inspect_onnx_out_has_a_shape_on_every_edge(work, tmp_path):
    """Shapes come from the engine's profile (an engine built for fixed shapes has them baked into its layers;
    propagating at probe sizes lost every shape past the first specialized layer)."""
    import onnx
    d, _ = work
    out = tmp_path / "view.onnx"
    kiln("inspect", "tiny.engine", "--onnx-out", out, cwd=d, check=0)
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    typed = {v.name for v in m.graph.value_info} | {v.name for v in m.graph.output}
    edges = {o for n in m.graph.node for o in n.output if o}
    assert edges <= typed, sorted(edges - typed)


def test_table_names_are_not_cut_mid_word():
    from kiln.engine.report import shorten
    assert shorten("/model/layers.3/attention/self/MatMul", 20) == "\u2026/self/MatMul"
    assert shorten("short", 20) == "short"
    s = shorten("convolution_with_bias_and_relu", 20)
    assert len(s) == 20 and s.startswith("convolu") and s.endswith("relu") and "\u2026" in s


def test_profile_that_does_not_add_up_is_flagged():
    from kiln.cli.layerprof import latency_check

    class Ctx:
        def infer(self, inputs):
            pass

    class Engine:
        def create_execution_context(self):
            return Ctx()

    rows = [{"ms": 50.0}, {"ms": 60.0}]  # 110 ms of layers for a run that takes microseconds
    warning = latency_check(Engine(), {}, rows, runs=3)
    assert warning is not None and "add up to 110.000 ms" in warning
    latency_check(Engine(), {}, [{"ms": 0.0}], runs=3)  # a zero-length profile: no division by zero

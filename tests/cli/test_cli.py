"""Every `kiln` subcommand run as a user runs it (a subprocess), results and errors. Kept to one build of a
tiny model per session (builds dominate the time); everything else reuses the engine."""
import json

import numpy as np
import pytest

from cli_support import kiln


def test_build_prints_plain_progress_in_a_pipe_and_the_summary(work):
    d, p = work
    assert (d / "tiny.engine").is_file()
    assert "[kiln] passes" in p.stderr and "\r" not in p.stderr  # plain lines, no live redraw in a pipe
    assert "6 ONNX nodes -> 4 engine layers" in p.stdout
    assert "memory: arena" in p.stdout


def test_bench_prints_trtexec_summary_and_exports_times(work):
    d, _ = work
    p = kiln("bench", "tiny.engine", "--warmup", "10", "--iterations", "8", "--duration", "0.2", "--streams", "2",
             "--export-times", "times.json", "--percentiles", "50,99", cwd=d, check=0)
    for label in ("Throughput:", "Latency: min =", "Enqueue Time:", "Compute Time:", "percentile(99%)",
                  "H2D Latency: 0 ms (zero-cost on CPU)", "D2H Latency: 0 ms (zero-cost on CPU)"):
        assert label in p.stdout, label
    doc = json.loads((d / "times.json").read_text())
    assert doc["inferences"] >= 8 and len(doc["times"]) == doc["inferences"]
    assert {r["context"] for r in doc["times"]} == {0, 1}
    assert all(r["h2d_ms"] == 0 and r["d2h_ms"] == 0 and r["compute_ms"] > 0 for r in doc["times"])
    assert set(doc["stats"]["latency_ms"]["percentiles"]) == {"50", "99"}


def test_run_loads_npy_and_writes_npz_matching_the_reference(work):
    import onnx
    from onnx.reference import ReferenceEvaluator
    d, _ = work
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.save(d / "x.npy", x)
    p = kiln("run", "tiny.engine", "--input", "x:x.npy", "-o", "out.npz", cwd=d, check=0)
    assert "out.npz" in p.stdout
    want = ReferenceEvaluator(onnx.load(str(d / "tiny.onnx"))).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.load(d / "out.npz")["y"], want, rtol=1e-4, atol=1e-5)


def test_run_random_inputs_printed_are_reproducible(work):
    d, _ = work
    a = kiln("run", "tiny.engine", "--seed", "3", cwd=d, check=0)
    assert a.stdout.startswith("y: float32[2x4]")
    b = kiln("run", "tiny.engine", "--seed", "3", "--save-inputs", "in.npz", cwd=d, check=0)
    assert a.stdout == b.stdout
    assert np.load(d / "in.npz")["x"].shape == (2, 3, 8, 8)


def test_inspect_profile_json_and_onnx_export(work):
    import onnx
    d, _ = work
    p = kiln("inspect", "tiny.engine", "--profile", "--runs", "3", "--json", "--onnx-out", "opt.onnx", cwd=d, check=0)
    doc = json.loads(p.stdout)
    layers = {l["name"]: l for l in doc["layers"]}
    fused = [l for l in doc["layers"] if len(l["covers"]) > 1]
    assert fused and {"relu", "scale", "residual"} <= set(fused[0]["covers"])
    assert set(r["name"] for r in doc["profile"]) == set(layers)
    assert abs(sum(r["share"] for r in doc["profile"]) - 1) < 1e-6
    assert doc["metadata"]["device"]["type"] == "cpu" and "arena_bytes" in doc["memory"]
    m = onnx.load(str(d / "opt.onnx"))
    kiln_nodes = [n for n in m.graph.node if n.domain == "kiln"]
    assert kiln_nodes and any("residual" in n.doc_string for n in kiln_nodes)
    onnx.checker.check_model(m)
    covers = {n.name: [p.value for p in n.metadata_props if p.key == "kiln.covers"] for n in m.graph.node}
    assert all(covers[n] for n in covers)
    assert all(any(p.key == "kiln.time_ms" for p in n.metadata_props) for n in m.graph.node if n.name in layers)
    shaped = {vi.name for vi in list(m.graph.value_info) + list(m.graph.output) if vi.type.tensor_type.HasField("shape")}
    assert {o.name for o in m.graph.output} <= shaped and len(m.graph.value_info) >= len(m.graph.node) - 2


def test_inspect_onnx_export_of_a_horizontally_fused_engine(tmp_path):
    """The QKV-style merge leaves a Split that covers no ONNX node; exporting it once crashed."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", f"W{i}"], [f"y{i}"]) for i in range(3)]
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), f"W{i}") for i in range(3)]
    g = helper.make_graph(nodes, "qkv", [helper.make_tensor_value_info("x", TP.FLOAT, [2, 4, 16])],
                          [helper.make_tensor_value_info(f"y{i}", TP.FLOAT, None) for i in range(3)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "qkv.onnx"))
    kiln("inspect", "qkv.onnx", "--onnx-out", "qkv_opt.onnx", cwd=tmp_path)
    m = onnx.load(str(tmp_path / "qkv_opt.onnx"))
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node] == ["Linear", "Split"]
    assert all(o.type.tensor_type.shape.dim[2].dim_value == 16 for o in m.graph.output)


def test_inspect_text_and_plot(work):
    d, _ = work
    try:
        import matplotlib  # noqa: F401
        has_mpl = True
    except ImportError:
        has_mpl = False
    p = kiln("inspect", "tiny.engine", "--plot", "layers.png", "--runs", "2", cwd=d)
    if has_mpl:
        assert p.returncode == 0 and (d / "layers.png").stat().st_size > 0
        assert "== layers: 4" in p.stdout and "share" in p.stdout
    else:
        assert p.returncode == 1
        assert p.stderr.strip() == "kiln: error: --plot needs matplotlib, which is not installed: pip install 'kiln[plot]'"


def test_compare_passes_and_per_layer_names_first_divergent_layer(work):
    d, _ = work
    p = kiln("compare", "tiny.onnx", "tiny.engine", "--per-layer", cwd=d, check=0)
    assert "PASS" in p.stdout and "cosine" in p.stdout
    p = kiln("compare", "tiny.onnx", "tiny.engine", "--atol", "0", "--rtol", "0", "--per-layer", "--json", cwd=d)
    doc = json.loads(p.stdout)
    assert p.returncode == 3 and doc["ok"] is False  # 3: outputs differ
    assert doc["per_layer"]["first_divergent"]["node"] == "conv"  # float rounding differs from the first op on
    assert doc["per_layer"]["first_divergent_engine_layer"]["node"] == "conv"


def test_exec_build_then_load_with_trtexec_flags(work):
    d, _ = work
    p = kiln("exec", "--onnx=tiny.onnx", "--saveEngine=exec.engine", "--shapes=x:2x3x8x8", "--buildOnly",
             "--device=cpu", cwd=d, check=0)
    assert (d / "exec.engine").is_file() and "&&&& PASSED" in p.stdout
    p = kiln("exec", "--loadEngine=exec.engine", "--shapes=x:2x3x8x8", "--iterations=5", "--warmUp=10",
             "--duration=0.1", "--avgRuns", "5", "--percentile=90,99", "--exportTimes=t.json", "--dumpProfile",
             "--exportOutput=o.json", "--exportLayerInfo=l.json", cwd=d, check=0)
    assert "=== Performance summary ===" in p.stdout and "[I] Throughput:" in p.stdout
    assert "Average on 5 runs" in p.stdout and "percentile(99%)" in p.stdout and "&&&& PASSED" in p.stdout
    assert "Per-layer profile" in p.stdout
    assert json.loads((d / "o.json").read_text())[0]["dimensions"] == "2x4"
    times = json.loads((d / "t.json").read_text())  # trtexec's layout: one record per inference
    assert len(times) >= 5 and {"startEnqMs", "computeMs", "latencyMs", "h2dMs", "d2hMs"} <= set(times[0])
    assert len(json.loads((d / "l.json").read_text())["Layers"]) == 4


@pytest.mark.parametrize("flag, message", [
    ("--maxBatch=4", "kiln: error: trtexec flag --maxBatch is not supported by kiln exec"),
    ("--frobnicate=1", "kiln: error: unknown trtexec flag --frobnicate"),
])
def test_exec_rejects_flags_it_does_not_implement(work, flag, message):
    d, _ = work
    p = kiln("exec", "--loadEngine=tiny.engine", flag, cwd=d)
    assert p.returncode != 0 and p.stderr.strip().startswith(message), p.stderr
    assert "&&&& FAILED" in p.stdout


def test_error_missing_file(work):
    d, _ = work
    p = kiln("bench", "missing.engine", cwd=d, check=1)
    assert p.stderr.strip() == "kiln: error: model or engine file 'missing.engine' does not exist"


def test_error_malformed_shape_and_unknown_name(work):
    d, _ = work
    p = kiln("run", "tiny.engine", "--shapes", "x:2by3", cwd=d, check=1)
    assert p.stderr.strip().startswith("kiln: error: --shapes 'x:2by3': dimensions '2by3' are not integers")
    p = kiln("run", "tiny.engine", "--shapes", "image:2x3x8x8", cwd=d, check=1)
    assert p.stderr.strip() == ("kiln: error: --shapes: unknown input name(s) 'image'; the model's inputs are 'x'")


def test_error_not_a_model_and_traceback_only_with_verbose(work):
    d, _ = work
    (d / "junk.onnx").write_bytes(b"\x00not a model at all")
    p = kiln("inspect", "junk.onnx", "--device", "cpu", cwd=d, check=1)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: error: model file") and "Traceback" not in p.stderr
    p = kiln("inspect", "junk.onnx", "--device", "cpu", "--verbose", cwd=d, check=1)
    assert "Traceback" in p.stderr and p.stderr.strip().splitlines()[-1].startswith("kiln: error:")


def test_engine_for_another_device_moves_here(work):
    import torch
    from kiln.engine.format import pack, unpack
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    d, _ = work
    header, plan, weights = unpack((d / "tiny.engine").read_bytes())
    header["device"] = {"type": "cuda", "name": "NVIDIA H100", "capability": [9, 0]}
    for k in ("plan_bytes", "weights_bytes", "raw_dtypes"):
        header.pop(k)
    header["config"]["device"] = "cuda"
    (d / "gpu.engine").write_bytes(pack(header, plan, weights))
    # An engine built on a GPU moves to this CPU, and inspect says so.
    p = kiln("inspect", "gpu.engine", cwd=d, check=0)
    assert "device: cpu" in p.stdout and "(built for cuda NVIDIA H100)" in p.stdout
    assert "load note: built for GPU 'NVIDIA H100' (compute capability 9.0), running on CPU" in p.stdout


def test_usage_error_is_one_line_exit_2_via_the_kiln_script(work):
    import subprocess
    import sys
    from pathlib import Path
    d, _ = work
    script = Path(sys.executable).with_name("kiln")  # the console script pip installed (entry kiln.cli.main:main)
    if not script.exists():
        pytest.skip("the kiln console script is not installed next to this Python")
    p = subprocess.run([str(script), "build", "tiny.onnx"], capture_output=True, text=True, cwd=d, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == ("kiln: error: build: the following arguments are required: -o/--output "
                                "(see 'kiln build --help')")


def test_every_flag_of_every_subcommand_has_help():
    import argparse
    from kiln.cli.exec import make_parser as exec_parser
    from kiln.cli.main import make_parser
    parser = make_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parsers = {name: p for name, p in sub.choices.items() if name != "exec"}
    parsers["exec"] = exec_parser()
    assert set(parsers) == {"build", "bench", "run", "inspect", "compare", "exec", "quantize", "serve", "sign",
                            "verify"}
    for name, p in parsers.items():
        for action in p._actions:
            assert action.help and action.help != argparse.SUPPRESS, f"kiln {name}: {action.option_strings} lacks help"
        assert p.format_help()

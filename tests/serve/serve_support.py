"""The serving tests' shared model repository and helpers (the fixtures are in conftest.py; a module with its own
name, because ``from conftest import`` picks whichever conftest was imported first).

Models (all tiny, built on the CPU in seconds):
  tiny_resnet  the bundled example (ONNX, built on load), dynamic batching up to 8
  mixed        ONNX from onnx.helper: FP32 and INT32 inputs and outputs, no config (no dynamic batching)
  ranged       a saved engine file whose profile spans batch 1..4 and a second dim 1..8
  queue_probe  the same engine, with a long batching delay and a queue of 1 (for 503 and timeouts)
  broken       a folder with no version: UNAVAILABLE in the index, the others still serve
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import kiln

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny_resnet.onnx"
LOCAL = "127.0.0.1"


def mixed_model() -> onnx.ModelProto:
    """sum = 2*x + float(k), kk = k + k, with a dynamic batch dim."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    k = helper.make_tensor_value_info("k", TensorProto.INT32, ["N", 4])
    s = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 4])
    kk = helper.make_tensor_value_info("kk", TensorProto.INT32, ["N", 4])
    nodes = [helper.make_node("Constant", [], ["two"], value=helper.make_tensor("t", TensorProto.FLOAT, [], [2.0])),
             helper.make_node("Mul", ["x", "two"], ["x2"]),
             helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x2", "kf"], ["sum"]),
             helper.make_node("Add", ["k", "k"], ["kk"])]
    graph = helper.make_graph(nodes, "mixed", [x, k], [s, kk])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def ranged_model() -> onnx.ModelProto:
    """y = 3*x over a [N, D] input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "D"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "D"])
    nodes = [helper.make_node("Constant", [], ["three"], value=helper.make_tensor("t", TensorProto.FLOAT, [], [3.0])),
             helper.make_node("Mul", ["x", "three"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "ranged", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def make_repository(root: Path) -> Path:
    (root / "tiny_resnet" / "1").mkdir(parents=True)
    shutil.copy(EXAMPLE, root / "tiny_resnet" / "1" / "model.onnx")
    (root / "tiny_resnet" / "config.pbtxt").write_text(
        "max_batch_size: 8\n"
        "dynamic_batching { max_queue_delay_microseconds: 2000 preferred_batch_size: [ 4, 8 ] }\n")
    (root / "mixed" / "1").mkdir(parents=True)
    onnx.save(mixed_model(), str(root / "mixed" / "1" / "model.onnx"))
    engine = kiln.build(ranged_model(), kiln.BuilderConfig(
        profiles=(kiln.Profile.of(x=((1, 1), (2, 4), (4, 8))),)))
    for name in ("ranged", "queue_probe"):
        (root / name / "1").mkdir(parents=True)
        engine.save(root / name / "1" / "model.engine")
    (root / "queue_probe" / "config.pbtxt").write_text(
        "dynamic_batching { max_queue_delay_microseconds: 1500000\n"
        "                   default_queue_policy { max_queue_size: 1 } }\n")
    (root / "broken").mkdir()
    return root


def reference(server, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What ctx.infer gives on the very engine the server runs."""
    engine = server.repository.get(model).engine
    return engine.create_execution_context().infer(inputs)

"""Small ONNX models that the engine fuzz test and the saved-engine fixtures start from, with their feeds.

Each seed exercises a different part of the engine file: fused layers with epilogues and tactic records
(conv net), a dynamic batch dimension with a profile (MLP), and subgraphs read from an outer scope (If/Loop).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def conv_net():
    """Conv+BN+ReLU, max pool, a residual conv (epilogue add+relu), average pool, concat, flatten, Gemm."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "W2", "B2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], group=2),
             helper.make_node("Add", ["c2", "p1"], ["a2"], name="residual"),
             helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
             helper.make_node("AveragePool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g2"], name="gap"),
             helper.make_node("Flatten", ["p2"], ["f"], name="flat"),
             helper.make_node("Flatten", ["g2"], ["fg"], name="flat_g"),
             helper.make_node("Concat", ["f", "fg"], ["cat"], name="cat", axis=1),
             helper.make_node("Gemm", ["cat", "G", "GB"], ["y"], name="fc", transB=1)]
    inits = [_init("W1", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             _init("B1", np.zeros(4, np.float32)), _init("s", np.ones(4, np.float32)),
             _init("b", np.full(4, 0.1, np.float32)), _init("m", np.zeros(4, np.float32)),
             _init("v", np.ones(4, np.float32)),
             _init("W2", rng.standard_normal((4, 2, 3, 3)).astype(np.float32)),
             _init("B2", np.zeros(4, np.float32)),
             _init("G", rng.standard_normal((5, 20)).astype(np.float32)), _init("GB", np.zeros(5, np.float32))]
    return _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 5])], inits)


def mlp():
    """MatMul+Add+ReLU, MatMul, Softmax and a Reshape/Transpose tail on a dynamic batch."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "B1"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["o"], name="mm2"),
             helper.make_node("Softmax", ["o"], ["y"], name="softmax", axis=-1),
             helper.make_node("Reshape", ["o", "shape"], ["o3"], name="reshape"),
             helper.make_node("Transpose", ["o3"], ["z"], name="tr", perm=[0, 2, 1]),
             helper.make_node("ReduceSum", ["z", "axes"], ["s"], name="sum", keepdims=0)]
    inits = [_init("W1", rng.standard_normal((6, 8)).astype(np.float32)),
             _init("B1", rng.standard_normal(8).astype(np.float32)),
             _init("W2", rng.standard_normal((8, 4)).astype(np.float32)),
             _init("shape", np.array([0, 2, 2], np.int64)), _init("axes", np.array([1], np.int64))]
    return _model(nodes, [_vi("x", ["N", 6])], [_vi("y", ["N", 4]), _vi("s", ["N", 2])], inits)


def control_flow():
    """A Loop (3 iterations, accumulating a value read from the outer graph) and an If on an input.

    The loop also stops on its own condition (i < 3): a mutation that drops the trip count leaves a loop
    that ends, not a valid model that runs for ever."""
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "x"], ["acc_out"], name="body_add"),
         helper.make_node("Less", ["i", "M"], ["cond_out"], name="body_cond")],
        "body", [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("acc_in", [2, 3])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("acc_out", [2, 3])])
    then_g = helper.make_graph([helper.make_node("Mul", ["looped", "two"], ["t_out"], name="then_mul")],
                               "then", [], [_vi("t_out", [2, 3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["looped"], ["e_out"], name="else_neg")],
                               "else", [], [_vi("e_out", [2, 3])])
    nodes = [helper.make_node("Loop", ["M", "keep", "zero"], ["looped"], name="loop", body=body),
             helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    inits = [_init("M", np.array(3, np.int64)), _init("keep", np.array(True)),
             _init("zero", np.zeros((2, 3), np.float32)), _init("two", np.full((2, 3), 2.0, np.float32))]
    return _model(nodes, [_vi("x", [2, 3]), _vi("c", [], TensorProto.BOOL)], [_vi("z", [2, 3])], inits)


def build_options(name: str) -> dict:
    """BuilderConfig overrides for each seed (the MLP gets a profile so its batch is bounded)."""
    if name == "mlp":
        from kiln.builder.config import Profile
        return {"profiles": (Profile.of(x=((1, 6), (2, 6), (4, 6))),)}
    return {}


SEEDS = {"conv": conv_net, "mlp": mlp, "control": control_flow}


def build(name: str) -> bytes:
    """The seed engine's file, the same bytes on every run: what varies between builds (the creation time,
    measured times, and the tuner's choices, which follow those times) is pinned: each tuned layer records
    its CPU default, as a file edited by hand would."""
    import kiln
    from kiln.engine import format as fmt
    header, plan, weights = fmt.unpack(kiln.build(SEEDS[name](), **build_options(name)).serialize())
    header["created"] = "2026-01-01T00:00:00Z"
    report = header["report"]
    report.update(build_seconds=0.0, tuning={}, pass_seconds=[[name, 0.0] for name, _ in report["pass_seconds"]])
    for layer in report["layers"]:
        layer.update(time_ms=None, candidates={}, tactic="")
    for node in plan["nodes"]:
        if "tactic" in node.get("meta", {}):
            node["meta"]["tactic"] = {"name": "onednn" if node["domain"] == "kiln" else "torch", "params": {}}
    return fmt.pack(header, plan, weights)


def feed(name: str) -> dict:
    """A deterministic input for each seed."""
    if name == "conv":
        return {"x": (np.arange(192, dtype=np.float32).reshape(1, 3, 8, 8) % 7) / 7}
    if name == "mlp":
        return {"x": (np.arange(12, dtype=np.float32).reshape(2, 6) % 5) / 5}
    return {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "c": np.array(True)}

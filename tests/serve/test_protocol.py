"""The KServe v2 protocol against the official clients: tritonclient HTTP and gRPC, and plain curl. Every
answer is compared with ctx.infer on the engine the server runs."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serve_support import LOCAL, reference

RNG = np.random.default_rng(0)
IMAGE = RNG.random((3, 3, 64, 64), dtype=np.float32)
MIXED = {"x": RNG.standard_normal((2, 4)).astype(np.float32), "k": RNG.integers(-50, 50, (2, 4), dtype=np.int32)}
DTYPES = {np.float32: "FP32", np.int32: "INT32"}


def _inputs(module, arrays: dict[str, np.ndarray], binary: bool = True):
    out = []
    for name, a in arrays.items():
        i = module.InferInput(name, list(a.shape), DTYPES[a.dtype.type])
        if module is httpclient:
            i.set_data_from_numpy(a, binary_data=binary)
        else:
            i.set_data_from_numpy(a)
        out.append(i)
    return out


def test_health_and_metadata_http(http):
    assert http.is_server_live() and http.is_server_ready()
    meta = http.get_server_metadata()
    assert meta["name"] == "kiln" and "binary_tensor_data" in meta["extensions"]
    assert http.is_model_ready("tiny_resnet") and http.is_model_ready("tiny_resnet", "1")
    assert not http.is_model_ready("tiny_resnet", "2") and not http.is_model_ready("broken")
    m = http.get_model_metadata("tiny_resnet")
    assert m["versions"] == ["1"]
    assert m["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]
    assert m["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    config = http.get_model_config("tiny_resnet")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == ["3", "64", "64"]
    assert http.get_model_config("mixed")["max_batch_size"] == 8  # no config.pbtxt: Kiln's default build


def test_health_and_metadata_grpc(grpc_client):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.get_server_metadata().name == "kiln"
    m = grpc_client.get_model_metadata("mixed", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in m["inputs"]] == [("x", "FP32", ["-1", "4"]),
                                                                             ("k", "INT32", ["-1", "4"])]
    assert grpc_client.get_model_config("ranged").config.max_batch_size == 4  # the engine profile's max
    assert not grpc_client.is_model_ready("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_infer_matches_ctx_infer(server, http, binary):
    want = reference(server, "tiny_resnet", {"image": IMAGE})["logits"]
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
    result = http.infer("tiny_resnet", _inputs(httpclient, {"image": IMAGE}, binary), outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-5, atol=1e-5)
    mixed = http.infer("mixed", _inputs(httpclient, MIXED, binary))
    ref = reference(server, "mixed", MIXED)
    np.testing.assert_array_equal(mixed.as_numpy("sum"), ref["sum"])
    np.testing.assert_array_equal(mixed.as_numpy("kk"), ref["kk"])
    assert mixed.as_numpy("kk").dtype == np.int32


def test_grpc_infer_matches_ctx_infer(server, grpc_client):
    want = reference(server, "tiny_resnet", {"image": IMAGE})["logits"]
    result = grpc_client.infer("tiny_resnet", _inputs(grpcclient, {"image": IMAGE}), request_id="r7")
    np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-5, atol=1e-5)
    assert result.get_response().id == "r7" and result.get_response().model_version == "1"
    ref = reference(server, "mixed", MIXED)
    only_kk = grpc_client.infer("mixed", _inputs(grpcclient, MIXED), outputs=[grpcclient.InferRequestedOutput("kk")])
    assert only_kk.as_numpy("sum") is None
    np.testing.assert_array_equal(only_kk.as_numpy("kk"), ref["kk"])
    x = RNG.random((2, 7), dtype=np.float32)
    ranged = grpc_client.infer("ranged", _inputs(grpcclient, {"x": x}), model_version="1")
    np.testing.assert_array_equal(ranged.as_numpy("y"), reference(server, "ranged", {"x": x})["y"])


def test_grpc_typed_contents(server):
    """Inputs in InferTensorContents (not raw bytes), as other KServe clients send them."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc
    with grpc.insecure_channel(f"{LOCAL}:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="mixed")
        request.inputs.add(name="x", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend(
            MIXED["x"].ravel().tolist())
        request.inputs.add(name="k", datatype="INT32", shape=[2, 4]).contents.int_contents.extend(
            MIXED["k"].ravel().tolist())
        response = stub.ModelInfer(request)
    outputs = {o.name: i for i, o in enumerate(response.outputs)}
    got = np.frombuffer(response.raw_output_contents[outputs["sum"]], np.float32).reshape(2, 4)
    np.testing.assert_array_equal(got, reference(server, "mixed", MIXED)["sum"])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_json(server):
    body = json.dumps({"id": "c1", "inputs": [
        {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": MIXED["x"].tolist()},  # nested lists
        {"name": "k", "shape": [2, 4], "datatype": "INT32", "data": MIXED["k"].ravel().tolist()}]})
    url = f"http://{LOCAL}:{server.http_port}/v2/models/mixed/infer"
    out = subprocess.run(["curl", "-sS", "--noproxy", "*", "-X", "POST", url, "-H", "Content-Type: application/json",
                          "-d", body], capture_output=True, text=True, check=True).stdout
    answer = json.loads(out)
    assert answer["id"] == "c1" and answer["model_name"] == "mixed"
    ref = reference(server, "mixed", MIXED)
    by_name = {o["name"]: o for o in answer["outputs"]}
    assert by_name["kk"]["datatype"] == "INT32" and by_name["kk"]["shape"] == [2, 4]
    np.testing.assert_array_equal(np.array(by_name["kk"]["data"], np.int32).reshape(2, 4), ref["kk"])
    np.testing.assert_array_equal(np.array(by_name["sum"]["data"], np.float32).reshape(2, 4), ref["sum"])
    health = subprocess.run(["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}",
                             f"http://{LOCAL}:{server.http_port}/v2/health/ready"], capture_output=True, text=True)
    assert health.stdout == "200"


def test_repository_index_unload_load(http, grpc_client):
    index = {(m["name"], m.get("version")): m for m in http.get_model_repository_index()}
    assert index[("tiny_resnet", "1")]["state"] == "READY"
    assert index[("broken", None)]["state"] == "UNAVAILABLE" and "no version folder" in index[("broken", None)]["reason"]
    grpc_client.unload_model("ranged")
    assert not http.is_model_ready("ranged")
    with pytest.raises(Exception, match="unknown or unloaded model 'ranged'"):
        http.infer("ranged", _inputs(httpclient, {"x": np.ones((1, 2), np.float32)}))
    http.load_model("ranged")
    assert grpc_client.is_model_ready("ranged")
    result = http.infer("ranged", _inputs(httpclient, {"x": np.ones((1, 2), np.float32)}))
    np.testing.assert_array_equal(result.as_numpy("y"), np.full((1, 2), 3.0, np.float32))


def test_metrics_use_tritons_names(server, http):
    import urllib.request
    http.infer("mixed", _inputs(httpclient, MIXED))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(f"http://{LOCAL}:{server.metrics_port}/metrics").read().decode()
    for name in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_exec_count", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
                 "nv_inference_request_duration_us", "nv_inference_pending_request_count", "kiln_batch_size_bucket"):
        assert f'\n{name}{{' in text, name
    success = [line for line in text.splitlines() if line.startswith('nv_inference_request_success{model="mixed"')]
    assert success and float(success[0].split()[-1]) >= 1


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_compressed_request_body(server, http, algorithm):
    result = http.infer("mixed", _inputs(httpclient, MIXED), request_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("sum"), reference(server, "mixed", MIXED)["sum"])

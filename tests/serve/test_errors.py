"""Bad requests get a 4xx / gRPC status with Kiln's message, the server keeps serving, and no other request is
lost or answered wrong; a full queue answers 503 at once; a request past its timeout gets 504."""
from __future__ import annotations

import http.client
import json
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serve_support import LOCAL, reference

IMAGE = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)


def post(server, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(LOCAL, server.http_port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data and response.getheader("content-type", "").startswith(
            "application/json") else {})
    finally:
        conn.close()


def tensor(name, shape, datatype, data):
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": data}


def image_body(shape=(1, 3, 64, 64), name="image", datatype="FP32"):
    n = int(np.prod(shape))
    return json.dumps({"inputs": [tensor(name, shape, datatype, [0.5] * n)]}).encode()


BAD_HTTP = [  # (id, path, body, headers, status, words in the message)
    ("unknown model", "/v2/models/nope/infer", image_body(), {}, 404, "unknown or unloaded model 'nope'"),
    ("unknown version", "/v2/models/tiny_resnet/versions/9/infer", image_body(), {}, 404, "no loaded version '9'"),
    ("wrong input name", "/v2/models/tiny_resnet/infer", image_body(name="img"), {}, 400, "has no input 'img'"),
    ("wrong dtype", "/v2/models/tiny_resnet/infer", image_body(datatype="FP64"), {}, 400, "must have datatype FP32"),
    ("wrong shape", "/v2/models/tiny_resnet/infer", image_body((1, 3, 32, 32)), {}, 400, "(dimension 2)"),
    ("batch over max", "/v2/models/tiny_resnet/infer", image_body((9, 3, 64, 64)), {}, 400, "outside 1..8"),
    ("outside profile", "/v2/models/ranged/infer",
     json.dumps({"inputs": [tensor("x", (1, 9), "FP32", [1.0] * 9)]}).encode(), {}, 400,
     "fit no optimization profile"),
    ("malformed JSON", "/v2/models/tiny_resnet/infer", b"{inputs: ", {}, 400, "not valid JSON"),
    ("no inputs", "/v2/models/tiny_resnet/infer", b"{}", {}, 400, "needs 'inputs'"),
    ("too few values", "/v2/models/ranged/infer",
     json.dumps({"inputs": [tensor("x", (1, 4), "FP32", [1.0] * 3)]}).encode(), {}, 400, "needs 4 values"),
    ("unknown datatype", "/v2/models/ranged/infer",
     json.dumps({"inputs": [tensor("x", (1, 4), "FP8", [1.0] * 4)]}).encode(), {}, 400, "datatype 'FP8'"),
    ("text where numbers go", "/v2/models/ranged/infer",
     json.dumps({"inputs": [tensor("x", (1, 2), "FP32", ["a", "b"])]}).encode(), {}, 400, "cannot be read as FP32"),
    ("binary size past the body", "/v2/models/ranged/infer",
     json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                             "parameters": {"binary_data_size": 8}}]}).encode() + b"1234",
     None, 400, "runs past"),
    ("oversized body", "/v2/models/tiny_resnet/infer", b"x" * (2 << 20), {}, 413, "over the server's limit"),
]


@pytest.mark.parametrize("path,body,headers,status,words", [row[1:] for row in BAD_HTTP],
                         ids=[row[0] for row in BAD_HTTP])
def test_bad_http_request(server, path, body, headers, status, words):
    if headers is None:  # a binary-data request: the JSON header's length
        headers = {"Inference-Header-Content-Length": str(body.index(b"1234"))}
    got, answer = post(server, path, body, headers)
    assert got == status and words in answer["error"], answer
    # and the server still answers a good request, correctly
    good = httpclient.InferenceServerClient(f"{LOCAL}:{server.http_port}")
    i = httpclient.InferInput("image", list(IMAGE.shape), "FP32")
    i.set_data_from_numpy(IMAGE)
    np.testing.assert_allclose(good.infer("tiny_resnet", [i]).as_numpy("logits"),
                               reference(server, "tiny_resnet", {"image": IMAGE})["logits"], rtol=1e-5, atol=1e-5)


def test_bad_grpc_requests(server, grpc_client):
    def call(model, x, **kw):
        i = grpcclient.InferInput("x" if model != "tiny_resnet" else "image", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as e:
            grpc_client.infer(model, [i], **kw)
        return e.value
    assert "NOT_FOUND" in call("nope", np.ones((1, 2), np.float32)).status()
    e = call("ranged", np.ones((1, 9), np.float32))
    assert "INVALID_ARGUMENT" in e.status() and "fit no optimization profile" in e.message()
    e = call("tiny_resnet", np.ones((1, 3, 8, 8), np.float32))
    assert "INVALID_ARGUMENT" in e.status()
    e = call("tiny_resnet", np.ones((8, 3, 64, 64), np.float32).repeat(5, axis=2)[:, :, :256])  # 1.5 MiB > 1 MiB
    assert "RESOURCE_EXHAUSTED" in e.status()
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    i = grpcclient.InferInput("x", [1, 6], "FP32")
    i.set_data_from_numpy(x)
    np.testing.assert_array_equal(grpc_client.infer("ranged", [i]).as_numpy("y"), 3 * x)


def test_concurrent_good_and_bad_requests_are_each_answered_right(server):
    """Batches form from concurrent requests; each good one gets its own rows back, bad ones fail alone."""
    rng = np.random.default_rng(2)
    images = [rng.random((int(rng.integers(1, 3)), 3, 64, 64), dtype=np.float32) for _ in range(16)]
    want = [reference(server, "tiny_resnet", {"image": x})["logits"] for x in images]
    got, errors = [None] * len(images), []

    def good(k):
        c = httpclient.InferenceServerClient(f"{LOCAL}:{server.http_port}")
        i = httpclient.InferInput("image", list(images[k].shape), "FP32")
        i.set_data_from_numpy(images[k])
        got[k] = c.infer("tiny_resnet", [i]).as_numpy("logits")

    def bad(k):
        status, answer = post(server, "/v2/models/tiny_resnet/infer", image_body((1, 3, 60, 64)))
        errors.append(status)
    threads = [threading.Thread(target=good, args=(k,)) for k in range(len(images))]
    threads += [threading.Thread(target=bad, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [400] * 6
    for k in range(len(images)):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)


def _wait_until(condition, what: str):
    """Poll a server-side condition (not a timing assertion: the bound only keeps a broken test from hanging)."""
    for _ in range(2000):
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def test_full_queue_answers_503_at_once_and_timeouts_504(server):
    """queue_probe waits 1.5 s to fill a batch and queues at most one request. Request A is being collected,
    B (another shape, so it cannot join A) waits in the queue, C finds the queue full."""
    batcher = server.repository.get("queue_probe").batcher
    results = {}

    def send(key, d, params=None):
        body = {"inputs": [tensor("x", (1, d), "FP32", [float(d)] * d)]}
        if params:
            body["parameters"] = params
        results[key] = post(server, "/v2/models/queue_probe/infer", json.dumps(body).encode())
    a = threading.Thread(target=send, args=("a", 2))
    a.start()
    _wait_until(lambda: batcher.queued() == 0 and _pending(server, "queue_probe") == 1, "A collected")
    b = threading.Thread(target=send, args=("b", 3))
    b.start()
    _wait_until(lambda: batcher.queued() == 1, "B queued")
    send("c", 4)
    assert results["c"][0] == 503 and "queue is full" in results["c"][1]["error"]
    a.join()
    b.join()
    assert results["a"][0] == 200 and results["a"][1]["outputs"][0]["data"] == [6.0, 6.0]
    assert results["b"][0] == 200 and results["b"][1]["outputs"][0]["data"] == [9.0] * 3
    # A timeout: D waits behind E's collection and is withdrawn after 50 ms
    e = threading.Thread(target=send, args=("e", 2))
    e.start()
    _wait_until(lambda: batcher.queued() == 0 and _pending(server, "queue_probe") == 1, "E collected")
    send("d", 5, {"timeout": 50_000})
    assert results["d"][0] == 504 and "timeout" in results["d"][1]["error"]
    e.join()
    assert results["e"][0] == 200


def _pending(server, model: str) -> int:
    stats = server.metrics.snapshot()
    return sum(s.pending for (name, _), s in stats.items() if name == model)


def test_grpc_deadline_is_the_request_timeout(server):
    """A gRPC client deadline shorter than the wait: DEADLINE_EXCEEDED, and the server keeps serving."""
    batcher = server.repository.get("queue_probe").batcher
    client = grpcclient.InferenceServerClient(f"{LOCAL}:{server.grpc_port}")
    done = {}

    def first():
        i = grpcclient.InferInput("x", [1, 2], "FP32")
        i.set_data_from_numpy(np.ones((1, 2), np.float32))
        done["first"] = client.infer("queue_probe", [i]).as_numpy("y")
    t = threading.Thread(target=first)
    t.start()
    _wait_until(lambda: batcher.queued() == 0 and _pending(server, "queue_probe") == 1, "first collected")
    i = grpcclient.InferInput("x", [1, 3], "FP32")
    i.set_data_from_numpy(np.ones((1, 3), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("queue_probe", [i], client_timeout=0.05)
    assert "DEADLINE_EXCEEDED" in err.value.status()
    t.join()
    np.testing.assert_array_equal(done["first"], np.full((1, 2), 3.0, np.float32))

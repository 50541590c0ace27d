"""Kiln on Ray Serve: three local replicas of the example model answer tritonclient HTTP requests as ctx.infer
does, and killing one replica under load loses no request silently (each is answered right or fails with an
error status, never with a wrong answer). Ray is a heavy install kept out of the test extra (the `ray` extra
brings it), so this module is skipped where it is absent."""
from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

import tritonclient.http as httpclient  # noqa: E402

import kiln  # noqa: E402
from serve_support import EXAMPLE, LOCAL  # noqa: E402

REPLICAS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_app(tmp_path_factory):
    from kiln.serve.ray_app import kiln_app
    folder = tmp_path_factory.mktemp("ray_repo") / "tiny_resnet"
    (folder / "1").mkdir(parents=True)
    # An engine file: each replica loads it (validated data) instead of building.
    engine = kiln.build(str(EXAMPLE), kiln.BuilderConfig(profiles=(kiln.Profile.of(
        image=((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))),)))
    engine.save(folder / "1" / "model.engine")
    (folder / "config.pbtxt").write_text("dynamic_batching { max_queue_delay_microseconds: 5000 }\n")
    port = free_port()
    ray.init(num_cpus=REPLICAS + 1, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": LOCAL, "port": port})
        serve.run(kiln_app(folder, device="cpu", num_replicas=REPLICAS,
                           ray_actor_options={"num_cpus": 1}), name="kiln", route_prefix="/v2/models/tiny_resnet")
        yield port, engine
    finally:
        serve.shutdown()
        ray.shutdown()


def _infer(client, x):
    i = httpclient.InferInput("image", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return client.infer("tiny_resnet", [i]).as_numpy("logits")


def test_replicas_answer_as_ctx_infer(ray_app):
    port, engine = ray_app
    client = httpclient.InferenceServerClient(f"{LOCAL}:{port}", concurrency=8)
    rng = np.random.default_rng(0)
    xs = [rng.random((int(rng.integers(1, 3)), 3, 64, 64), dtype=np.float32) for _ in range(24)]
    ctx = engine.create_execution_context()
    got = [None] * len(xs)

    def call(k):
        got[k] = _infer(httpclient.InferenceServerClient(f"{LOCAL}:{port}"), xs[k])
    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, y in zip(xs, got):
        np.testing.assert_allclose(y, ctx.infer({"image": x})["logits"], rtol=1e-4, atol=1e-4)
    assert client.get_model_metadata("tiny_resnet")["inputs"][0]["shape"] == [-1, 3, 64, 64]
    with pytest.raises(Exception, match="has no input 'img'"):
        i = httpclient.InferInput("img", [1, 3, 64, 64], "FP32")
        i.set_data_from_numpy(xs[0][:1])
        client.infer("tiny_resnet", [i])


def test_killing_a_replica_under_load_never_gives_a_wrong_answer(ray_app):
    port, engine = ray_app
    ctx = engine.create_execution_context()
    rng = np.random.default_rng(1)
    pool = [rng.random((1, 3, 64, 64), dtype=np.float32) for _ in range(8)]
    want = [ctx.infer({"image": x})["logits"] for x in pool]
    outcomes = {"ok": 0, "error": 0, "wrong": 0}
    lock = threading.Lock()
    started = threading.Barrier(9)

    def client(cid):
        c = httpclient.InferenceServerClient(f"{LOCAL}:{port}", network_timeout=120)
        started.wait()
        for k in range(12):
            i = (cid + k) % len(pool)
            try:
                y = _infer(c, pool[i])
                kind = "ok" if np.allclose(y, want[i], rtol=1e-4, atol=1e-4) else "wrong"
            except Exception:  # noqa: BLE001 - an error status is an allowed outcome; a wrong answer is not
                kind = "error"
            with lock:
                outcomes[kind] += 1
    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    started.wait()
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "SERVE_REPLICA" in a["name"] and "tiny_resnet" in a["name"]]
    assert len(replicas) == REPLICAS, replicas
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    for t in threads:
        t.join()
    print("outcomes with one replica killed:", outcomes)
    assert outcomes["wrong"] == 0 and outcomes["ok"] + outcomes["error"] == 8 * 12, outcomes
    assert outcomes["ok"] > 0, outcomes

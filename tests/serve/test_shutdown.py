"""`kiln serve` as a process: it starts on free ports, and SIGTERM under load answers every request it has
received, then exits 0."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from serve_support import LOCAL, mixed_model

ROOT = Path(__file__).resolve().parents[2]
STARTUP_LINES = 200


def start(repository: Path) -> tuple[subprocess.Popen, dict[str, int]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln", "serve", "--model-repository", str(repository), "--device", "cpu",
         *(f"--{w}-{k}={v}" for w in ("http", "grpc", "metrics") for k, v in (("port", 0), ("address", LOCAL)))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for _ in range(STARTUP_LINES):  # readiness: the line it prints once every endpoint listens
        line = proc.stdout.readline()
        lines.append(line)
        if "kiln serve: ready" in line or not line:
            break
    ports = {k.lower(): int(v) for k, v in re.findall(r"(HTTP|gRPC|metrics) [\d.]+:(\d+)", lines[-1])}
    assert set(ports) == {"http", "grpc", "metrics"}, "".join(lines)
    return proc, ports


def test_sigterm_answers_queued_requests_then_exits_0(tmp_path):
    import onnx
    (tmp_path / "mixed" / "1").mkdir(parents=True)
    onnx.save(mixed_model(), str(tmp_path / "mixed" / "1" / "model.onnx"))
    # A long batching delay keeps the requests queued when SIGTERM arrives.
    (tmp_path / "mixed" / "config.pbtxt").write_text("max_batch_size: 16\n"
                                                     "dynamic_batching { max_queue_delay_microseconds: 3000000 }\n")
    proc, ports = start(tmp_path)
    try:
        n = 8
        rng = np.random.default_rng(3)
        xs = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(n)]
        ks = [rng.integers(-9, 9, (1, 4), dtype=np.int32) for _ in range(n)]
        answers: dict[int, object] = {}

        def call(i):
            c = httpclient.InferenceServerClient(f"{LOCAL}:{ports['http']}", network_timeout=120)
            a = httpclient.InferInput("x", [1, 4], "FP32")
            a.set_data_from_numpy(xs[i])
            b = httpclient.InferInput("k", [1, 4], "INT32")
            b.set_data_from_numpy(ks[i])
            try:
                answers[i] = c.infer("mixed", [a, b])
            except Exception as e:  # noqa: BLE001 - recorded, and the assertion below says which
                answers[i] = e
        threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local: never via a proxy
        for _ in range(4000):  # until the server holds all n requests (a bound against hanging, not a timing)
            text = opener.open(f"http://{LOCAL}:{ports['metrics']}/metrics").read().decode()
            m = re.search(r'nv_inference_pending_request_count\{model="mixed",version="1"\} (\S+)', text)
            if m and float(m.group(1)) == n:
                break
        assert m and float(m.group(1)) == n
        assert not answers  # every request is still in the server when the signal arrives
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "kiln serve: stopped" in out
    for i in range(n):
        result = answers[i]
        assert not isinstance(result, Exception), result
        np.testing.assert_array_equal(result.as_numpy("sum"), 2 * xs[i] + ks[i].astype(np.float32))
        np.testing.assert_array_equal(result.as_numpy("kk"), 2 * ks[i])

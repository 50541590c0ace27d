"""Load on `kiln serve`: N concurrent clients (tritonclient gRPC or HTTP) for a while, dynamic batching off and
on; throughput, p50/p99 latency, the batch sizes the server formed, errors and mismatched answers. Beside it,
the same engine called in-process (ctx.infer at batch 1 and at the max batch) as the ceiling.

    python benchmarks/bench_serve.py                                   # the bundled example, 64 clients, 60 s
    python benchmarks/bench_serve.py --models resnet50,bert_base --clients 64 --duration 60
    python benchmarks/bench_serve.py --device cuda --models resnet50 --max-batch 64 --precision fp16

Each configuration starts its own `python -m kiln serve` subprocess on free local ports (clients and server
share the machine's cores) and stops it with SIGTERM, which must exit 0. Every answer is compared with the
in-process engine's output for the same input (rtol/atol 1e-3): a wrong or swapped answer counts as a
mismatch. Not a test: nothing here fails on a number.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

LOCAL = "127.0.0.1"
POOL = 16  # distinct inputs per model; client i sends pool[(i + k) % POOL]


# -- the models -------------------------------------------------------------------------------------------
def prepare(name: str, folder: Path, seq: int) -> tuple[list[dict[str, np.ndarray]], dict[str, tuple]]:
    """Write folder/1/model.onnx; return a pool of batch-1 inputs and the config dims per input."""
    import torch
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "1" / "model.onnx"
    g = torch.Generator().manual_seed(0)
    if name == "tiny_resnet":
        shutil.copy(ROOT / "examples" / "tiny_resnet.onnx", onnx_path)
        rng = np.random.default_rng(0)
        return [{"image": rng.random((1, 3, 64, 64), dtype=np.float32)} for _ in range(POOL)], {}
    import models
    model, sample, axes = models.MODELS[name]()
    size = seq if name == "bert_base" else 224
    if not onnx_path.exists():
        models.export_onnx(model, sample(1, size, g), onnx_path, axes)
    pool = []
    for _ in range(POOL):
        pool.append({n: t.numpy() for n, t in zip(axes, sample(1, size, g))})
    dims = {n: (seq,) for n in axes} if name == "bert_base" else {}
    return pool, dims


def write_config(folder: Path, max_batch: int, batching: bool, delay_us: int, dims: dict, precision: str,
                 instances: int) -> None:
    lines = [f"max_batch_size: {max_batch}"]
    for n, d in dims.items():
        lines.append(f'input {{ name: "{n}" dims: [{", ".join(map(str, d))}] }}')
    if batching:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} "
                     f"default_queue_policy {{ max_queue_size: 1024 }} }}")
    else:
        # Triton without dynamic_batching runs each request alone; the queue still needs room for every client.
        lines.append("dynamic_batching { max_queue_delay_microseconds: 0 default_queue_policy { max_queue_size: "
                     "1024 } }\n# (batching off: every request runs alone; see --batching)")
    lines.append(f"instance_group [ {{ count: {instances} }} ]")
    lines.append(f'parameters {{ key: "precision" value {{ string_value: "{precision}" }} }}')
    (folder / "config.pbtxt").write_text("\n".join(lines) + "\n")


# -- in-process ceiling -----------------------------------------------------------------------------------
def in_process(folder: Path, device: str, pool, max_batch: int, seconds: float, repo: Path) -> tuple[dict, list]:
    from kiln.serve.build import build_for_serving
    from kiln.serve.config import read_settings
    settings = read_settings(folder)
    engine = build_for_serving(folder / "1" / "model.onnx", settings, device, repo / "kiln_timing_cache.json")
    ctx = engine.create_execution_context()
    refs = [ctx.infer(x) for x in pool]
    row = {}

    def measure():
        for batch in sorted({1, max_batch}):
            feed = {n: np.concatenate([pool[i % POOL][n] for i in range(batch)]) for n in pool[0]}
            for _ in range(2):
                ctx.infer(feed)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                ctx.infer(feed)
                n += 1
            row[f"in_process_b{batch}_inf_per_s"] = round(n * batch / (time.perf_counter() - t0), 1)
    # In a worker thread, as the server runs its contexts: on a busy 2-core machine, torch's CPU kernels
    # called from the main thread with 2 intra-op threads ran ~20x slower than from a worker thread.
    worker = threading.Thread(target=measure)
    worker.start()
    worker.join()
    return row, refs


# -- the server -------------------------------------------------------------------------------------------
def start_server(repo: Path, device: str) -> tuple[subprocess.Popen, dict[str, int]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "kiln", "serve", "--model-repository", str(repo), "--device",
                             device, *(f"--{w}-{k}={v}" for w in ("http", "grpc", "metrics")
                                       for k, v in (("port", 0), ("address", LOCAL)))],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        if "kiln serve: ready" in line:
            ports = {k.lower(): int(v) for k, v in re.findall(r"(HTTP|gRPC|metrics) [\d.]+:(\d+)", line)}
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain the log
            return proc, ports
        print("   server:", line.rstrip())
    raise SystemExit(f"kiln serve exited with {proc.wait()} before it was ready")


def scrape(port: int, model: str) -> dict[str, float]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(f"http://{LOCAL}:{port}/metrics").read().decode()
    out = {}
    for name in ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count",
                 "kiln_execution_duration_us"):
        m = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    buckets = re.findall(rf'^kiln_batch_size_bucket{{le="([^"]+)",model="{model}",version="1"}} (\S+)$', text, re.M)
    out["batch_hist"] = {le: float(v) for le, v in buckets}
    return out


def load(ports: dict, protocol: str, model: str, pool, refs, clients: int, seconds: float, warmup: float) -> dict:
    if protocol == "grpc":
        import tritonclient.grpc as tc
        url = f"{LOCAL}:{ports['grpc']}"
    else:
        import tritonclient.http as tc
        url = f"{LOCAL}:{ports['http']}"
    types = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32"}
    lat: list[float] = []
    counts = {"ok": 0, "errors": 0, "mismatches": 0}
    error_kinds: dict[str, int] = {}
    lock = threading.Lock()
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    def client(cid: int):
        c = tc.InferenceServerClient(url) if protocol == "grpc" else tc.InferenceServerClient(url, network_timeout=600)
        k = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            i = (cid + k) % POOL
            k += 1
            inputs = []
            for n, a in pool[i].items():
                x = tc.InferInput(n, list(a.shape), types[a.dtype])
                x.set_data_from_numpy(a)
                inputs.append(x)
            try:
                result = c.infer(model, inputs)
                good = all(np.allclose(result.as_numpy(n), r, rtol=1e-3, atol=1e-3) for n, r in refs[i].items())
                err = None
            except Exception as e:  # noqa: BLE001 - counted by kind
                good, err = False, str(e).split(":")[0][:80]
            t1 = time.perf_counter()
            if t0 < measure_from:
                continue
            with lock:
                if err is not None:
                    counts["errors"] += 1
                    error_kinds[err] = error_kinds.get(err, 0) + 1
                elif not good:
                    counts["mismatches"] += 1
                else:
                    counts["ok"] += 1
                    lat.append(t1 - t0)
        c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()
    return {"requests_ok": counts["ok"], "errors": counts["errors"], "mismatches": counts["mismatches"],
            "error_kinds": error_kinds, "throughput_req_per_s": round(counts["ok"] / seconds, 1),
            "p50_ms": round(1e3 * lat[len(lat) // 2], 1) if lat else None,
            "p99_ms": round(1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1) if lat else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny_resnet", help="tiny_resnet, resnet50, bert_base (comma-separated)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds measured per configuration")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    ap.add_argument("--batching", default="off,on")
    ap.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--delay-us", type=int, default=5000, help="max_queue_delay_microseconds when batching is on")
    ap.add_argument("--instances", type=int, default=1, help="execution contexts per model")
    ap.add_argument("--seq", type=int, default=128, help="BERT sequence length")
    ap.add_argument("--workdir", default=None, help="keep the repository (exports, timing cache) here")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="kiln_bench_serve_"))
    rows = []
    for name in args.models.split(","):
        repo = work / name
        folder = repo / name
        pool, dims = prepare(name, folder, args.seq)
        for mode in args.batching.split(","):
            # The in-process ceiling right before each run: the machine's load drifts (it may be shared).
            write_config(folder, args.max_batch, True, args.delay_us, dims, args.precision, args.instances)
            base, refs = in_process(folder, args.device, pool, args.max_batch, min(10.0, args.duration), repo)
            write_config(folder, args.max_batch, mode == "on", args.delay_us, dims, args.precision, args.instances)
            if mode == "off":  # no dynamic_batching block at all: Triton's (and Kiln's) run-alone mode
                text = (folder / "config.pbtxt").read_text()
                (folder / "config.pbtxt").write_text(re.sub(r"dynamic_batching \{.*?\} \}\n", "", text, flags=re.S))
            proc, ports = start_server(repo, args.device)
            try:
                before = scrape(ports["metrics"], name)
                t0 = time.perf_counter()
                result = load(ports, args.protocol, name, pool, refs, args.clients, args.duration, args.warmup)
                wall_us = (time.perf_counter() - t0) * 1e6
                after = scrape(ports["metrics"], name)
            finally:
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait(120)
            execs = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
            infs = after["nv_inference_count"] - before["nv_inference_count"]
            row = {"model": name, "device": args.device, "precision": args.precision, "protocol": args.protocol,
                   "clients": args.clients, "seconds": args.duration, "dynamic_batching": mode,
                   "max_batch": args.max_batch, "delay_us": args.delay_us if mode == "on" else 0, **result,
                   "mean_batch": round(infs / execs, 2) if execs else None, "batch_hist": after["batch_hist"],
                   "engine_busy_pct": round(100 * (after["kiln_execution_duration_us"]
                                                   - before["kiln_execution_duration_us"]) / wall_us
                                            / args.instances, 1),
                   "engine_ms_per_inference": round((after["kiln_execution_duration_us"]
                                                     - before["kiln_execution_duration_us"]) / 1e3 / infs, 2)
                   if infs else None,
                   "sigterm_exit_code": rc, **base}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| model | batching | clients | req/s | p50 ms | p99 ms | mean batch | engine busy % | engine ms/inference "
          "| errors | mismatches | in-process b1 inf/s | in-process bmax inf/s | SIGTERM rc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        bmax = r.get(f"in_process_b{r['max_batch']}_inf_per_s")
        print(f"| {r['model']} | {r['dynamic_batching']} | {r['clients']} | {r['throughput_req_per_s']} | "
              f"{r['p50_ms']} | {r['p99_ms']} | {r['mean_batch']} | {r['engine_busy_pct']} | "
              f"{r['engine_ms_per_inference']} | {r['errors']} | {r['mismatches']} | "
              f"{r['in_process_b1_inf_per_s']} | {bmax} | {r['sigterm_exit_code']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()

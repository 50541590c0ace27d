"""Fuzz the engine loader: every hostile engine file loads and runs, or raises a KilnError. Nothing else.

Seeds are small engines built with ``kiln.build`` on the CPU (engine_seeds.py: a conv net, an MLP, an If/Loop
model); engine_mutations.py makes hostile files from them, most with the checksum recomputed (it is unkeyed,
so an attacker does the same). Each file is loaded with ``Engine.deserialize`` and run once, in worker
processes (engine_fuzz_worker.py) under a 4 GiB address-space cap and a time limit, so that a signal
(SIGFPE, SIGSEGV), a hang or unbounded allocation is caught and named, not fatal to pytest.

A worker runs a batch of engines and reports each; when it dies or stalls, the engine it was on is re-run
alone in a fresh process to confirm, and a new worker takes the rest of the batch.

Deterministic: mutation K of seed S comes from ``random.Random(f"{BASE}:{S}:{K}")``. For a bigger or other
run: ``KILN_ENGINE_FUZZ=100000 KILN_ENGINE_FUZZ_SEED=7 pytest tests/engine/test_engine_fuzz.py``
(``KILN_ENGINE_FUZZ_WORKERS`` sets the number of worker processes, default 2).
"""
from __future__ import annotations

import collections
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import kiln

sys.path.insert(0, str(Path(__file__).parent))
import engine_seeds  # noqa: E402

COUNT = int(os.environ.get("KILN_ENGINE_FUZZ", "10000"))  # mutated engines per run (CI: 10000, ~25 s on 2 cores)
BASE = os.environ.get("KILN_ENGINE_FUZZ_SEED", "kiln-engine-fuzz-1")
WORKERS = int(os.environ.get("KILN_ENGINE_FUZZ_WORKERS", "2"))
WORKER = str(Path(__file__).parent / "engine_fuzz_worker.py")
ALARM_S = 10  # per engine, in the worker (hangs in Python code); a normal one takes milliseconds
STALL_S = 40  # no line from a worker this long: a hang in native code, the worker is killed
MEMORY_BYTES = 4 << 30


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    """The seeds built here, with this Kiln, saved where the workers read them."""
    folder = tmp_path_factory.mktemp("engine_seeds")
    paths = {}
    for name in engine_seeds.SEEDS:
        paths[name] = str(folder / f"{name}.bin")
        Path(paths[name]).write_bytes(engine_seeds.build(name))
    return paths


@pytest.mark.parametrize("name", sorted(engine_seeds.SEEDS))
def test_seeds_load_and_run_right(seed_files, name):
    """Mutations start from engines that load and match onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator
    model = engine_seeds.SEEDS[name]()
    feed = engine_seeds.feed(name)
    got = kiln.Engine.load(seed_files[name]).create_execution_context().infer(feed)
    want = ReferenceEvaluator(model).run(None, feed)
    for out, w in zip(model.graph.output, want):
        np.testing.assert_allclose(got[out.name], w, rtol=1e-4, atol=1e-5, err_msg=out.name)


# -- running batches in worker processes --------------------------------------------------------------------
Result = collections.namedtuple("Result", "seed index status what detail")


class _Worker:
    """One worker process over ``jobs``; yields its lines, None at exit, "stall" when silent too long."""

    def __init__(self, seeds: dict, jobs: list):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
        self.stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env)
        self.proc.stdin.write(json.dumps({"seeds": seeds, "jobs": jobs, "base": BASE, "alarm_s": ALARM_S,
                                          "memory_bytes": MEMORY_BYTES}))
        self.proc.stdin.close()
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self):
        try:
            return self.lines.get(timeout=STALL_S)
        except queue.Empty:
            return "stall"

    def end(self) -> str:
        """Stop the process (if still running) and say how it ended; the tail of its stderr."""
        if self.proc.poll() is None:
            self.proc.kill()
        rc = self.proc.wait()
        self.stderr.seek(0)
        tail = self.stderr.read()[-600:]
        self.stderr.close()
        how = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
        return f"{how}; stderr: ...{tail}"


def run_jobs(seeds: dict, jobs: list, confirm: bool = True) -> list[Result]:
    """Run every (seed, index) job; a worker that dies or hangs is replaced and its engine confirmed alone."""
    results: list[Result] = []
    rest = list(jobs)
    while rest:
        worker = _Worker(seeds, rest)
        current, done_upto = None, 0
        while True:
            line = worker.next_line()
            if line is None or line == "stall":
                how = ("stalled " + str(STALL_S) + "s (hang); " if line == "stall" else "") + worker.end()
                break
            kind, k, *tail = line.split(" ", 3)
            k = int(k)
            if kind == "start":
                current = k
            else:
                what, detail = json.loads(tail[1])
                results.append(Result(*rest[k], tail[0], what, detail))
                done_upto, current = k + 1, None
        if current is None:  # the worker finished its batch (or died between engines)
            if done_upto < len(rest):
                results += [Result(*j, "bad", "", f"worker ended before this engine: {how}") for j in rest[done_upto:]]
            break
        culprit = rest[current]
        detail = f"the worker {how}"
        if confirm:
            alone = run_jobs(seeds, [culprit], confirm=False)[0]
            detail += f" | alone: {alone.status} {alone.detail}"
        results.append(Result(*culprit, "bad", "(see detail)", detail))
        rest = rest[current + 1:]
    return results


def run_parallel(seeds: dict, jobs: list, workers: int) -> list[Result]:
    chunks = [jobs[i::workers] for i in range(workers)]
    out: list[list[Result]] = [[] for _ in chunks]
    threads = [threading.Thread(target=lambda i=i: out[i].extend(run_jobs(seeds, chunks[i])))
               for i in range(len(chunks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for part in out for r in part]


def test_mutated_engines_load_or_raise_kiln_error(seed_files):
    names = sorted(seed_files)
    jobs = [(names[i % len(names)], i // len(names)) for i in range(COUNT)]
    t0 = time.perf_counter()
    results = run_parallel(seed_files, jobs, max(1, WORKERS))
    seconds = time.perf_counter() - t0
    counts = collections.Counter(r.status for r in results)
    print(f"\nengine fuzz: {len(results)} mutated engines in {seconds:.1f}s: {dict(counts)}")
    bad = [r for r in results if r.status == "bad"]
    report = "\n".join(f"  {r.seed}#{r.index}: {r.what}\n      -> {r.detail}" for r in bad[:30])
    assert not bad, f"{len(bad)} of {len(results)} mutated engines escaped as non-KilnError failures:\n{report}"
    assert len(results) == COUNT
    if COUNT >= 1000:  # the mutations reach past the checksum and the JSON parser: many load and run
        assert counts["ok"] > COUNT // 50 and counts["kiln"] > COUNT // 2, dict(counts)

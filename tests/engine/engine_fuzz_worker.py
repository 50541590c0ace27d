"""The fuzz test's worker process: loads and runs a batch of mutated engines, one result line per engine.

Run as ``python engine_fuzz_worker.py`` with a JSON job description on stdin (see test_engine_fuzz.py). It
caps its own address space (RLIMIT_AS) so that a file that makes Kiln allocate without bound fails here
instead of taking the machine down, and arms SIGALRM per engine so a hang in Python code is reported as one.
Each engine gets ``start K`` before and ``done K STATUS DETAIL`` after, flushed, so that when the process
dies (a signal) or stalls (a hang in native code), the parent knows which engine did it.

STATUS is ``ok`` (loaded and ran), ``kiln`` (a KilnError: the accepted failure) or ``bad`` (anything else:
another exception, a MemoryError, a Python-level hang).
"""
from __future__ import annotations

import json
import os
import random
import resource
import signal
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class Hang(BaseException):  # BaseException: nothing in Kiln may catch it as an ordinary error
    pass


def _on_alarm(signum, frame):
    raise Hang("ran past the per-engine time limit")


def main() -> None:
    job = json.load(sys.stdin)
    limit = int(job.get("memory_bytes", 4 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    import engine_mutations
    import engine_seeds
    from kiln.ops import default_registry
    torch.set_num_threads(1)
    registry_ops = sorted({(d.domain, d.op_type) for d in default_registry()})
    seeds = {name: open(path, "rb").read() for name, path in job["seeds"].items()}
    signal.signal(signal.SIGALRM, _on_alarm)
    out = sys.stdout
    for k, (seed, index) in enumerate(job["jobs"]):
        out.write(f"start {k}\n")
        out.flush()
        rng = random.Random(f"{job['base']}:{seed}:{index}")
        try:
            data, what = engine_mutations.mutate(seeds[seed], rng, registry_ops)
        except Exception as e:  # noqa: BLE001 - a bug of the test, reported as one
            status, what, detail = "bad", "(mutation)", f"the mutator itself failed: {type(e).__name__}: {e}"
        else:
            status, detail = _run(data, engine_seeds.feed(seed), int(job.get("alarm_s", 10)))
        out.write(f"done {k} {status} {json.dumps([what, detail])}\n")
        out.flush()


def _run(data: bytes, feed: dict, alarm_s: int) -> tuple[str, str]:
    import kiln
    signal.alarm(alarm_s)
    try:
        engine = kiln.Engine.deserialize(data, "fuzzed engine")
        engine.create_execution_context().infer(feed)
        return "ok", ""
    except kiln.KilnError as e:
        msg = str(e)  # the message itself must be formattable
        cause = e.__cause__
        return "kiln", f"{type(e).__name__}: {msg[:200]}" + (f" <- {type(cause).__name__}" if cause else "")
    except BaseException as e:  # noqa: BLE001 - everything else is what the fuzz test looks for
        tb = traceback.extract_tb(e.__traceback__)[-3:]
        where = " | ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in tb)
        return "bad", f"{type(e).__name__}: {str(e)[:200]} @ {where}"
    finally:
        signal.alarm(0)


if __name__ == "__main__":
    main()

"""CPU threads: how many intra-op threads Kiln's kernels use, and how an idle pool thread waits.

Kiln's CPU kernels (torch, oneDNN, MKL) share one process-wide OpenMP pool (libgomp). By default an idle
libgomp thread spins for about 300,000 iterations after every parallel region before it sleeps. That is
harmless on an idle machine, but next to other busy processes the spinning threads take the cores that the
thread with work needs, and every layer waits for a time slice. Measured on the bundled example at batch 1
(2-core CPU, four busy processes beside it; benchmarks/bench_cpu_load.py): median/p90 latency 16.4/185 ms
with libgomp's default, 14.1/25 ms with OMP_WAIT_POLICY=PASSIVE, onnxruntime 12.9/21 ms. On the same machine
without the busy processes PASSIVE was not slower either. So Kiln asks for PASSIVE.

libgomp reads its wait policy once, when torch loads it. ``request_passive_wait`` therefore runs when
``kiln`` is imported, before ``kiln`` imports torch, and only when the user has not chosen a policy
(OMP_WAIT_POLICY or GOMP_SPINCOUNT set) and torch is not loaded yet. What happened is recorded in
``WAIT_POLICY`` and shown by ``describe()``; a CPU execution context warns once when the pool spins.

The intra-op thread count is process-wide in torch (``torch.set_num_threads``); ``set_threads`` sets it and
an execution context created with ``threads=N`` sets it before each of its runs.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from .errors import InputError  # errors.py imports nothing, so torch is still unloaded here

log = logging.getLogger("kiln.threads")

PASSIVE = "PASSIVE"
USER_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


@dataclass(frozen=True)
class WaitPolicy:
    value: str  # the OMP_WAIT_POLICY the pool runs with ("" where libgomp's default applies)
    chosen_by: str  # "kiln", "user" or "nobody" (torch was loaded before kiln and no variable was set)

    @property
    def spins(self) -> bool:
        return self.value.upper() != PASSIVE


def request_passive_wait() -> WaitPolicy:
    """Set OMP_WAIT_POLICY=PASSIVE for the pool torch is about to load, unless the user chose a policy or
    torch (and with it libgomp) is already loaded."""
    if any(v in os.environ for v in USER_VARIABLES):
        return WaitPolicy(os.environ.get("OMP_WAIT_POLICY", ""), "user")
    if "torch" in sys.modules:
        return WaitPolicy("", "nobody")
    os.environ["OMP_WAIT_POLICY"] = PASSIVE
    return WaitPolicy(PASSIVE, "kiln")


WAIT_POLICY = request_passive_wait()
_warned = False


def warn_if_spinning() -> None:
    """Once per process: say that the CPU pool spins and how to stop it (called by CPU execution contexts)."""
    global _warned
    if _warned or WAIT_POLICY.chosen_by != "nobody":
        return
    _warned = True
    log.warning("torch was imported before kiln, so its CPU thread pool keeps spinning after each layer "
                "(OMP_WAIT_POLICY is unset); beside other busy processes this can make latency several times "
                "worse. Import kiln before torch, or start Python with OMP_WAIT_POLICY=PASSIVE "
                "(or =ACTIVE to keep spinning and silence this warning).")


def check_thread_count(threads, what: str = "threads") -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"{what} must be a positive integer (the number of CPU intra-op threads), got {threads!r}")
    return threads


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads for Kiln's CPU kernels in this process (torch.set_num_threads)."""
    import torch
    threads = check_thread_count(threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def describe() -> str:
    """One line for reports and ``--verbose``: the thread count and the wait policy, and who chose it."""
    import torch
    policy = WAIT_POLICY.value or "libgomp default (spin, then sleep)"
    return f"{torch.get_num_threads()} intra-op threads, OMP_WAIT_POLICY {policy} (chosen by {WAIT_POLICY.chosen_by})"

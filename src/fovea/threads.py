"""How many CPUs fovea may really use, and torch's threads set from that, not from the machine.

A process may run on fewer CPUs than the machine has: its affinity mask (``taskset``, a scheduler's
cpuset) and its cgroup's CPU quota (a container's ``--cpus``, a CI runner) both limit it.
`usable_cpus` reads both. On a shared machine, OpenMP threads that spin while they wait
(``OMP_WAIT_POLICY=ACTIVE``, the runtime's habit) burn the core another process needs: a tiny Qwen2
step went from 0.075 s on one thread to 2.0 s on two beside one busy process. `configure` (run by
the ``fovea`` command before torch is imported, so ``fovea --help`` stays fast) makes idle threads
sleep after a short spin (`SPIN`) and sets torch's threads to the usable CPUs (shared by torchrun's processes on
the machine) less the DataLoader workers; what the user set in the environment wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

MAX_WORKERS = 4
SPIN = 3000
"""Spins an idle OpenMP thread makes before it sleeps (libgomp's ``GOMP_SPINCOUNT``; its default is
300,000, ``OMP_WAIT_POLICY=PASSIVE`` is 0). ``fovea demo --train-size 300 --epochs 1`` on 2 cores,
medians of 3: 10.5 s alone and 14.5 s beside one busy process at 3,000; 9.9 s and 29.2 s at the
default; 12.4 s and 12.3 s passive (docs/benchmarks.md)."""


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by its cgroup's quota (v2, then v1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else max(1, cpus)


def _cgroup_quota() -> float | None:
    try:
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        limit = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if limit <= 0 else limit / period
    except (OSError, ValueError):
        return None


def default_workers(cpus: int | None = None) -> int:
    """DataLoader workers when a recipe names none: one per usable CPU beyond the two that train,
    at most `MAX_WORKERS`; none on a machine of one or two CPUs, where a worker would take a core
    from the step (measured on 2 cores: docs/benchmarks.md)."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(0, min(MAX_WORKERS, cpus - 2))


def configure() -> None:
    """Before torch loads: the OpenMP wait policy and thread count (``OMP_NUM_THREADS``, which torch
    reads when it starts) from the usable CPUs; what the user set in the environment wins."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # torchrun's processes on this machine
    threads = max(1, usable_cpus() // max(1, local) - default_workers())
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))

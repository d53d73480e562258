"""`fovea demo` alone and beside one busy process, with libgomp's default spin (what torch did before
fovea set it) and with fovea's own setting (`fovea.threads.SPIN`), side by side in one run.

Each case is the whole command (`fovea demo --train-size 300 --epochs 1`, data, both stages,
evaluation) in a fresh process; "busy" is one `python -c "while True: pass"` beside it. The default
is forced with ``GOMP_SPINCOUNT=300000`` (libgomp's own default, which a user's setting overrides
in fovea too). Reported: medians over `--repeats` and busy / alone for each setting.

    python benchmarks/threads_busy.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import table

SETTINGS = {"libgomp default spin (before)": "300000", "fovea's spin": None}


def _demo(out: str, spin: str | None, busy: bool) -> float:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")
    }
    if spin is not None:
        env["GOMP_SPINCOUNT"] = spin
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "fovea.cli", "demo", "--train-size", "300", "--epochs", "1", "--out", out, "--quiet"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        return time.perf_counter() - start
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def run(repeats: int) -> str:
    times = {(name, busy): [] for name in SETTINGS for busy in (False, True)}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for (name, busy), found in times.items():
                found.append(_demo(f"{tmp}/run-{len(found)}-{busy}-{r}-{hash(name)}", SETTINGS[name], busy))
    rows = []
    for name in SETTINGS:
        alone, busy = statistics.median(times[name, False]), statistics.median(times[name, True])
        rows.append([name, f"{alone:.1f}", f"{busy:.1f}", f"{busy / alone:.2f}x"])
    return table(["setting", "alone s (median)", "beside one busy process s (median)", "busy / alone"], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    print(run(parser.parse_args().repeats))

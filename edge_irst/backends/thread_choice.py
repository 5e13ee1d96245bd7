"""threads="auto": the thread count that runs this model fastest on this machine, measured when it is loaded.

Why measure instead of taking every core: a 0.16 M-parameter model gains little from more threads, and on some
machines loses. On big.LITTLE boards the extra threads land on slow cores and the whole layer waits for them; on a
shared VM the second vCPU can give next to nothing for minutes (this repository's AMD VM, 2026-12-07: 2 threads
1.6x slower than 1, with no steal time shown to the guest; benchmarks/HISTORY.md).

The method: the artifact is loaded once per candidate (1, the powers of two below the core count, the core count),
each instance runs twice untimed, then ROUNDS rounds run RUNS_PER_ROUND inferences of a zero batch per candidate,
in an order balanced over the rounds (benchmarking.interleaved), so a phase of the machine that comes or goes hits
every candidate alike; OpenCV and PyTorch keep one thread count per process, so each candidate claims it
(Backend.claim_threads) before it runs. A candidate's figure is the median over the rounds of its per-round
median. The fewest threads within TOLERANCE of the fastest win: the cores left free run the reader thread and the
postprocess.
It costs 27 inferences per candidate: about 0.5 s for the bundled model at 256x256 on this repository's 2-core
VM (two candidates, loading included).

What was measured stays on the backend (`Backend.thread_choice`, reported by options_in_effect() as
"threads_auto"); the choice holds for the conditions at load time, so a long-running process whose machine
changes under it should reload, or pass an explicit count.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

from ..benchmarking import interleaved
from .base import Backend, physical_cores

ROUNDS = 5
RUNS_PER_ROUND = 5
UNTIMED_RUNS = 2
TOLERANCE = 0.05  # fewer threads are kept unless more are at least this much faster
RULE = (f"the fewest threads within {TOLERANCE:.0%} of the fastest median; each candidate loaded once, "
        f"{UNTIMED_RUNS} untimed runs, then {ROUNDS} rounds of {RUNS_PER_ROUND} runs in a balanced order, "
        f"median over the rounds of each round's median")


def candidates(cores: int) -> list[int]:
    """1, the powers of two below `cores`, and `cores` itself: [1], [1, 2], [1, 2, 4], [1, 2, 4, 6], ..."""
    counts, n = [1], 2
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + [cores] if cores > 1 else counts


def pick(medians_ms: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The fewest threads whose median is within `tolerance` of the fastest one."""
    fastest = min(medians_ms.values())
    return min(n for n, ms in medians_ms.items() if ms <= fastest * (1.0 + tolerance))


def load_fastest(open_backend: Callable[[int], Backend], counts: Sequence[int] = ()) -> Backend:
    """The backend `open_backend(threads)` returns for the fastest count of `counts` (default:
    candidates(physical_cores())), with `thread_choice` set; the other instances are closed."""
    counts = list(counts) or candidates(physical_cores())
    loaded: dict[int, Backend] = {}
    try:
        for n in counts:
            loaded[n] = open_backend(n)
        batch = loaded[counts[0]].zero_batch()
        for backend in loaded.values():
            backend.claim_threads()
            for _ in range(UNTIMED_RUNS):
                backend.run_preprocessed(batch)
        rounds: dict[int, list[float]] = {n: [] for n in counts}
        for r in range(ROUNDS):
            for n in interleaved(counts, r):
                loaded[n].claim_threads()
                times = []
                for _ in range(RUNS_PER_ROUND):
                    start = time.perf_counter_ns()
                    loaded[n].run_preprocessed(batch)
                    times.append((time.perf_counter_ns() - start) / 1e6)
                rounds[n].append(statistics.median(times))
        medians = {n: statistics.median(values) for n, values in rounds.items()}
        chosen = pick(medians)
    except BaseException:
        for backend in loaded.values():
            backend.close()
        raise
    for n, backend in loaded.items():
        if n != chosen:
            backend.close()
    best = loaded[chosen]
    best.claim_threads()
    best.thread_choice = {"chosen": chosen, "median_ms": {str(n): round(ms, 3) for n, ms in medians.items()},
                          "input": list(batch.shape), "rule": RULE}
    return best

"""How fast is the postprocessor? edge-irst's C labeller against OpenCV and against the authors' procedure.

Compared, on the same float32 logit map (threshold 0):
  ours         edge_irst.postprocess.label_targets(logits): threshold + 8-connected labelling + all statistics,
               returned as Detections (the public call, Python overhead included), on the calling thread;
  ours auto    the same with threads="auto": row bands scanned on several threads where the map is large enough
               (one band per AUTO_PIXELS_PER_THREAD pixels, at most one per usable CPU; 1 below that);
  cv2 CC       cv2.connectedComponentsWithStats((logits > 0).view(uint8), connectivity=8): thresholding is inside
               the timed region, as the C labeller thresholds too;
  ours+filter  label_targets(logits, target_filter=...) with the authors' bounds (area 5..100, ratio 0.2..5,
               exclusive), the filter applied inside the labeller;
  authors      the authors' full procedure, written from its description: threshold, connected components, a
               Python loop over the components that keeps those within the area/ratio bounds (the kept mask is
               built with a lookup table, the fastest reading of it), then a second connected-components pass on
               the filtered mask.
OpenCV runs multithreaded by default: every OpenCV figure is taken twice, with its default thread count and
with cv2.setNumThreads(1). Like against like: OpenCV with its default threads is compared with ours auto (and
ours+filter auto), OpenCV with 1 thread with ours on one thread.

Maps: sparse (3, 10, 50 targets of 3..60 pixels, logits 1..15, on a background of -20 +- 2), dense (5 % and
50 % random foreground: the issue's dense maps) and a checkerboard stress map (reported, no target), at 256x256,
640x512 and 1920x1080.
Timing: methods interleaved round by round, each sample the mean of enough calls to last >= 2 ms, after warm-up;
the time shown is the median sample, and a speed-up is the median over the rounds of the ratio of the two methods'
samples in that round (taken milliseconds apart, so a change in the machine's speed during the run, which this
shared VM shows from minute to minute, cannot set a fast sample of one against a slow one of the other). Two
clocks: wall-clock (every comparison), and the CPU time of the calling thread (comparisons where both sides run
on that thread only: ours, and OpenCV with 1 thread), which stays meaningful on a shared, oversubscribed machine
where wall-clock medians include time spent descheduled.

    .venv/bin/python benchmarks/postprocess.py            # table on stdout, JSON in benchmarks/results/
    .venv/bin/python benchmarks/postprocess.py --quick    # fewer samples, smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge_irst.postprocess import TargetFilter, implementation_info, label_targets
from edge_irst.postprocess.labeller import AUTO_PIXELS_PER_THREAD

RESULTS = Path(__file__).resolve().parent / "results" / "postprocess.json"
SAMPLE_US = 2000.0  # each sample times enough calls to last this long
SIZES = ((256, 256), (512, 640), (1080, 1920))  # (height, width)
AUTHORS_AREA = (5, 100)
AUTHORS_RATIO = (0.2, 5.0)
# The brief's targets: (map kind, size or None for every size, method compared, minimum speed-up).
TARGETS = (
    ("sparse", (256, 256), "cv2 CC", 20.0),
    ("sparse", (1080, 1920), "cv2 CC", 50.0),
    ("sparse", (256, 256), "authors", 40.0),
    ("dense", None, "cv2 CC", 1.0),
)


def sparse_map(rng: np.random.Generator, shape: tuple, targets: int) -> np.ndarray:
    """Background -20 +- 2 with `targets` separate blobs of 3..60 pixels (grown 4-connected) of logits 1..15."""
    logits = rng.normal(-20.0, 2.0, shape).astype(np.float32)
    placed = 0
    while placed < targets:
        size = int(rng.integers(3, 61))
        blob = {(0, 0)}
        while len(blob) < size:
            y, x = list(blob)[rng.integers(len(blob))]
            dy, dx = ((0, 1), (1, 0), (0, -1), (-1, 0))[rng.integers(4)]
            blob.add((y + dy, x + dx))
        ys, xs = np.array(sorted(blob)).T
        ys, xs = ys - ys.min(), xs - xs.min()
        top = int(rng.integers(1, shape[0] - ys.max() - 1))
        left = int(rng.integers(1, shape[1] - xs.max() - 1))
        window = logits[top - 1:top + ys.max() + 2, left - 1:left + xs.max() + 2]
        if (window > 0).any():  # keep targets apart (their 8-neighbourhoods too), so the count is exact
            continue
        logits[top + ys, left + xs] = rng.uniform(1.0, 15.0, len(ys)).astype(np.float32)
        placed += 1
    return logits


def dense_map(rng: np.random.Generator, shape: tuple, kind: str) -> np.ndarray:
    if kind == "checkerboard":
        on = (np.indices(shape).sum(axis=0) % 2) == 0
    else:
        on = rng.random(shape) < {"noise 5%": 0.05, "noise 50%": 0.5}[kind]
    return np.where(on, rng.uniform(0.5, 10.0, shape), rng.normal(-20.0, 2.0, shape)).astype(np.float32)


def benchmark_maps() -> list:
    """(family, kind, (height, width), float32 logits, targets placed or None) for every map timed, in order
    (fixed seed: benchmarks/labeller_ab.py times the same maps)."""
    rng = np.random.default_rng(2024)
    maps = []
    for shape in SIZES:
        for targets in (3, 10, 50):
            maps.append(("sparse", f"{targets} targets", shape, sparse_map(rng, shape, targets), targets))
        for kind in ("noise 5%", "noise 50%"):
            maps.append(("dense", kind, shape, dense_map(rng, shape, kind), None))
        # Not one of the dense maps: a worst case for any run-based labeller (every run one pixel, every
        # run joined to two above), timed and reported beside them, with no target of its own.
        maps.append(("stress", "checkerboard", shape, dense_map(rng, shape, "checkerboard"), None))
    return maps


def cv2_components(logits: np.ndarray):
    return cv2.connectedComponentsWithStats((logits > 0.0).view(np.uint8), connectivity=8)


def authors_procedure(logits: np.ndarray):
    """Threshold, components, Python filter loop (exclusive bounds), second components pass on the kept mask."""
    mask = (logits > 0.0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(count, np.uint8)
    for i in range(1, count):
        area = stats[i, cv2.CC_STAT_AREA]
        ratio = stats[i, cv2.CC_STAT_WIDTH] / stats[i, cv2.CC_STAT_HEIGHT]
        if AUTHORS_AREA[0] < area < AUTHORS_AREA[1] and AUTHORS_RATIO[0] < ratio < AUTHORS_RATIO[1]:
            keep[i] = 1
    return cv2.connectedComponentsWithStats(keep[labels], connectivity=8)


AUTHORS_FILTER = TargetFilter(size_min=AUTHORS_AREA[0], size_max=AUTHORS_AREA[1], ratio_min=AUTHORS_RATIO[0],
                              ratio_max=AUTHORS_RATIO[1], inclusive=False)


def ours_filtered(logits: np.ndarray):
    return label_targets(logits, target_filter=AUTHORS_FILTER)


def ours_auto(logits: np.ndarray):
    return label_targets(logits, threads="auto")


def ours_filtered_auto(logits: np.ndarray):
    return label_targets(logits, target_filter=AUTHORS_FILTER, threads="auto")


def sample(function, argument, calls: int) -> tuple:
    """(wall-clock, CPU time of this thread) in microseconds per call, over `calls` calls."""
    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
    for _ in range(calls):
        function(argument)
    return (time.perf_counter_ns() - wall) / calls / 1e3, (time.thread_time_ns() - cpu) / calls / 1e3


def time_methods(methods: dict, logits: np.ndarray, rounds: int, default_threads: int) -> tuple:
    """({method: [wall us per round]}, {method: [thread-CPU us per round]}); methods: name -> (function, OpenCV
    threads)."""
    calls = {}
    for name, (function, threads) in methods.items():  # warm-up, and the batch size of each sample
        if threads:
            cv2.setNumThreads(threads)
        for _ in range(3):
            function(logits)
        once = sample(function, logits, 1)[0]
        calls[name] = max(1, int(SAMPLE_US / max(once, 1e-3)))
    walls = {name: [] for name in methods}
    cpus = {name: [] for name in methods}
    for _ in range(rounds):
        for name, (function, threads) in methods.items():
            if threads:
                cv2.setNumThreads(threads)
            wall, cpu = sample(function, logits, calls[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
    cv2.setNumThreads(default_threads)
    return walls, cpus


def machine_info(default_threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu, "machine": platform.machine(), "logical_cpus": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
        "opencv_default_threads": default_threads, "postprocess": implementation_info(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=25, help="samples per method (median reported)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, for a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    info = implementation_info()
    if info["implementation"] != "c":
        print(f"note: the active postprocess implementation is {info['implementation']} ({info['detail']})",
              file=sys.stderr)

    default_threads = cv2.getNumThreads()
    machine = machine_info(default_threads)
    methods = {
        "ours": (label_targets, None),
        "ours auto": (ours_auto, None),
        f"cv2 CC ({default_threads} thr)": (cv2_components, default_threads),
        "cv2 CC (1 thr)": (cv2_components, 1),
        "ours+filter": (ours_filtered, None),
        "ours+filter auto": (ours_filtered_auto, None),
        f"authors ({default_threads} thr)": (authors_procedure, default_threads),
        "authors (1 thr)": (authors_procedure, 1),
    }
    maps = benchmark_maps()

    # (speed-up name, method timed, reference method, clock): CPU time only where everything runs on this thread.
    comparisons = [(f"cv2 CC ({default_threads} thr)", "ours auto", f"cv2 CC ({default_threads} thr)", "wall"),
                   ("cv2 CC (1 thr)", "ours", "cv2 CC (1 thr)", "wall"),
                   (f"authors ({default_threads} thr)", "ours+filter auto", f"authors ({default_threads} thr)", "wall"),
                   ("authors (1 thr)", "ours+filter", "authors (1 thr)", "wall")]
    comparisons += [("cv2 CC (1 thr)", "ours", "cv2 CC (1 thr)", "cpu"),
                     ("authors (1 thr)", "ours+filter", "authors (1 thr)", "cpu")]
    print(f"OpenCV {cv2.__version__}, default threads {default_threads}; edge-irst postprocess: "
          f"{info['implementation']} ({info['detail']}); medians of {rounds} samples (each >= {SAMPLE_US / 1e3:g} ms "
          f"of calls), microseconds per call; x = speed-up of ours (median of the per-round ratios)")
    names = list(methods)
    print(f"\n{'':>22} | {'wall-clock':<{15 * len(names) - 1}} | thread CPU time")
    print(f"{'size':>9} {'map':<12} | " + " ".join(f"{n:>14}" for n in names) + " | "
          + " ".join(f"{n:>14}" for n in ("ours", "cv2 CC (1 thr)", "ours+filter", "authors (1 thr)")))
    rows = []
    for family, kind, shape, logits, expected in maps:
        found = len(label_targets(logits))
        if expected is not None and found != expected:
            raise RuntimeError(f"sparse map generator: {found} targets labelled, {expected} placed")
        samples = dict(zip(("wall", "cpu"), time_methods(methods, logits, rounds, default_threads)))
        wall, cpu = ({name: statistics.median(values) for name, values in samples[clock].items()}
                     for clock in ("wall", "cpu"))
        speedup = {clock: {} for clock in samples}
        for label, ours, reference, clock in comparisons:
            per_round = zip(samples[clock][reference], samples[clock][ours])
            speedup[clock][label] = statistics.median(theirs / mine for theirs, mine in per_round)
        row = {"size": f"{shape[1]}x{shape[0]}", "family": family, "map": kind, "targets": found,
               "wall_us": wall, "thread_cpu_us": {n: cpu[n] for n in ("ours", "cv2 CC (1 thr)", "ours+filter",
                                                                       "authors (1 thr)")},
               "speedup_wall": speedup["wall"], "speedup_thread_cpu": speedup["cpu"]}
        rows.append(row)

        walls = []
        for n in names:
            ratio = next((f"{speedup['wall'][label]:.1f}x" for label, *_ in comparisons if label == n), "")
            walls.append(f"{wall[n]:>8.1f} {ratio:>5}")
        cpus = [f"{cpu['ours']:>8.1f} {'':>5}",
                f"{cpu['cv2 CC (1 thr)']:>8.1f} {speedup['cpu']['cv2 CC (1 thr)']:>4.1f}x",
                f"{cpu['ours+filter']:>8.1f} {'':>5}",
                f"{cpu['authors (1 thr)']:>8.1f} {speedup['cpu']['authors (1 thr)']:>4.1f}x"]
        print(f"{row['size']:>9} {kind:<12} | " + " ".join(f"{w:>14}" for w in walls) + " | "
              + " ".join(f"{c:>14}" for c in cpus), flush=True)

    verdicts = []
    for family, shape, method, minimum in TARGETS:
        chosen = [r for r in rows if r["family"] == family and (shape is None or r["size"] == f"{shape[1]}x{shape[0]}")]
        for label, _, _, clock in comparisons:
            if not label.startswith(method):
                continue
            key = "speedup_wall" if clock == "wall" else "speedup_thread_cpu"
            worst = min(chosen, key=lambda r: r[key][label])
            verdicts.append({
                "maps": family, "size": "all" if shape is None else f"{shape[1]}x{shape[0]}", "against": label,
                "clock": "wall-clock" if clock == "wall" else "thread CPU", "required": minimum,
                "worst": round(worst[key][label], 2), "worst_map": f"{worst['size']} {worst['map']}",
                "met": worst[key][label] >= minimum,
            })
    print("\ntargets (worst case over the maps concerned):")
    for v in verdicts:
        print(f"  {v['maps']:<6} {v['size']:>9} vs {v['against']:<17} {v['clock']:<10} >= {v['required']:>4}x: "
              f"worst {v['worst']:>7.2f}x ({v['worst_map']}) {'met' if v['met'] else 'NOT MET'}")
    against = "cv2 CC (1 thr)"
    worst_stress = min((r for r in rows if r["family"] == "stress"), key=lambda r: r["speedup_wall"][against])
    stress = {"maps": "checkerboard", "against": against, "clock": "wall-clock", "required": None,
              "worst": round(worst_stress["speedup_wall"][against], 2), "worst_map": worst_stress["size"]}
    print(f"  stress (checkerboard, no target): worst {stress['worst']:.2f}x vs {against} at "
          f"{stress['worst_map']}" + (" (slower than OpenCV)" if stress["worst"] < 1 else ""))

    document = {"benchmark": "postprocess", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": "python benchmarks/postprocess.py" + (" --quick" if args.quick else ""),
                "rounds": rounds, "speedup": "median over the rounds of the per-round ratio of the two samples",
                "machine": machine,
                "auto_pixels_per_thread": AUTO_PIXELS_PER_THREAD,
                "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
                "results": rows, "targets": verdicts, "stress": stress}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

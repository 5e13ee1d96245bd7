"""Does a busy Python thread slow the detector down? Time per frame of `Detector.detect` alone and beside a thread
that runs Python code without pause, at several interpreter switch intervals.

Why it matters: every native call that releases the GIL (the runtime's inference, OpenCV, numpy on large arrays)
has to take it back when it returns. While another thread is running Python code, CPython hands the GIL over only
when that thread is asked to drop it, and it asks only after the switch interval (`sys.getswitchinterval()`,
5 ms by default) has passed. A robot stack that runs Python threads of its own beside the detector (a ROS
callback, a busy control loop) pays that wait after such calls, on every frame. Lowering the interval
(`sys.setswitchinterval`, a setting of the whole process, which a library should not change behind its user's
back) shortens the wait and costs the busy thread a few more switches.

Measured, in rounds whose order of modes is balanced over the rounds (benchmarking.interleaved): "alone" (no other
thread, default interval), then "busy thread" at each interval. A mode's time is the mean per frame over `--frames`
frames (256x256 synthetic frames rendered beforehand, so only the detector is timed); its ratio is the median over the
rounds of its time over that round's "alone". "busy share" is how many loop iterations the busy thread made per second
against the same loop running with no detector beside it: what the other thread keeps.

    python benchmarks/gil_contention.py                   # bundled int8 ncnn model, table + JSON
    python benchmarks/gil_contention.py --model M --backend onnxruntime --frames 100 --rounds 8
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "gil_contention.json"
DEFAULT_MODEL = REPO / "edge_irst" / "assets" / "lw_irstnet" / "lw_irstnet_int8.param"
INTERVALS_MS = (5.0, 1.0, 0.5)  # 5 ms is CPython's default


class BusyThread:
    """A thread running a pure-Python counting loop until stopped; `rate` = iterations per second it ran."""

    def __init__(self):
        self._stop = threading.Event()
        self._count = 0
        self._thread = threading.Thread(target=self._spin, name="busy Python thread", daemon=True)
        self.rate = 0.0

    def _spin(self) -> None:
        count, stop = 0, self._stop.is_set
        while not stop():
            count += 1
        self._count = count

    def __enter__(self):
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.rate = self._count / (time.perf_counter() - self._start)


def per_frame_ms(detector, frames: list) -> float:
    start = time.perf_counter()
    for index, frame in enumerate(frames):
        detector.detect(frame, frame_index=index)
    return (time.perf_counter() - start) / len(frames) * 1e3


def solo_rate(seconds: float = 1.0) -> float:
    """Iterations per second of the busy loop with nothing beside it."""
    with BusyThread() as busy:
        time.sleep(seconds)
    return busy.rate


def measure(detector, frames: list, rounds: int) -> dict:
    """{mode: {"ms": [per round], "busy_rate": [per round, busy modes only]}} over `rounds` rounds (order
    balanced over the rounds)."""
    from edge_irst.benchmarking import interleaved

    default = sys.getswitchinterval()
    intervals = {"alone": None, **{f"busy thread, {ms:g} ms": ms / 1e3 for ms in INTERVALS_MS}}
    modes = list(intervals)
    runs = {mode: {"ms": [], "busy_rate": []} for mode in modes}
    try:
        for round_index in range(rounds):
            for mode in interleaved(modes, round_index):
                if intervals[mode] is None:
                    sys.setswitchinterval(default)
                    runs[mode]["ms"].append(per_frame_ms(detector, frames))
                    continue
                sys.setswitchinterval(intervals[mode])
                with BusyThread() as busy:
                    runs[mode]["ms"].append(per_frame_ms(detector, frames))
                runs[mode]["busy_rate"].append(busy.rate)
    finally:
        sys.setswitchinterval(default)
    return runs


def summarize(runs: dict, solo: float) -> dict:
    alone = runs["alone"]["ms"]
    summary = {}
    for mode, run in runs.items():
        ratios = [ms / base for ms, base in zip(run["ms"], alone)]
        summary[mode] = {
            "ms_per_frame": round(statistics.median(run["ms"]), 3),
            "ms_per_frame_rounds": [round(v, 3) for v in run["ms"]],
            "ratio_vs_alone": round(statistics.median(ratios), 3),
            "ratio_vs_alone_rounds": [round(v, 3) for v in ratios],
            "busy_share": round(statistics.median(run["busy_rate"]) / solo, 3) if run["busy_rate"] else None,
        }
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="artifact (default: the bundled int8 ncnn)")
    parser.add_argument("--backend", default=None, help="default: the fastest installed one that reads the model")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads (default: 1)")
    parser.add_argument("--frames", type=int, default=60, help="frames per mode and round (default: 60)")
    parser.add_argument("--rounds", type=int, default=8,
                        help="rounds (default: 8, twice the balanced order of the 4 modes)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import cv2

    from edge_irst.benchmarking import load_average, machine_info, machine_line, script_command
    from edge_irst.pipeline import Detector
    from edge_irst.synthetic import SyntheticScene

    machine = {**machine_info(), "opencv": cv2.__version__}
    scene = SyntheticScene((256, 256), targets=3, seed=0)
    frames = [scene.frame(i).image for i in range(args.frames)]
    with Detector(args.model, args.backend, threads=args.threads, warmup=10) as detector:
        solo = solo_rate()
        runs = measure(detector, frames, args.rounds)
        options = detector.backend.options_in_effect()
        report = {"benchmark": "gil_contention", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": script_command("benchmarks/gil_contention.py", argv), "machine": machine,
                  "backend": detector.backend.name, "artifact": str(detector.backend.path),
                  "threads_in_effect": options.get("threads"), "frames_per_round": args.frames,
                  "rounds": args.rounds, "default_switch_interval_ms": sys.getswitchinterval() * 1e3,
                  "timed": "Detector.detect on 256x256 grey frames rendered beforehand: preprocess, inference, "
                           "postprocess",
                  "busy_solo_rate_per_s": round(solo), "results": summarize(runs, solo),
                  "load_average_at_end": load_average()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(machine_line(machine))
    print(f"{report['artifact']} on {report['backend']}, threads {report['threads_in_effect']}, "
          f"{args.frames} frames x {args.rounds} rounds; Detector.detect per frame")
    print(f"\n{'mode':<24}{'ms/frame':>10}{'x alone':>10}{'busy share':>12}   rounds (ms)")
    for mode, row in report["results"].items():
        share = "-" if row["busy_share"] is None else f"{row['busy_share']:.2f}"
        print(f"{mode:<24}{row['ms_per_frame']:>10.2f}{row['ratio_vs_alone']:>9.2f}x{share:>12}   "
              + ", ".join(f"{v:.2f}" for v in row["ms_per_frame_rounds"]))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

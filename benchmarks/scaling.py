"""How does LW-IRSTNet's latency grow with the frame size and the thread count?

Frame sizes 256x256, 512x512, 640x512, 1280x1024 and 1920x1080 (W x H), each computed at native resolution two
ways:
  native  the whole frame through a dynamic-H/W export (edge_irst.export with dynamic=True), edge-padded to the
          stride: one inference of the full frame;
  tile    256x256 tiles of the fixed-size export laid over the frame with >= 32 px overlap, all tiles of a frame
          in one backend call (the Detector's tile policy; 1920x1080 = 45 tiles);
at 1 thread, 2 threads and all physical cores (duplicates dropped), on onnxruntime, ncnn and MNN (the runtimes
with dynamic-shape artifacts; --backends to change). Both from the authors' checkpoint LW_IRST.pkl, exported once
into the cache (shared with benchmarks/backends.py).

Stages: raw inference (backend.run on the prepared tensor) for every configuration; the full pipeline
(Detector.stream on synthetic frames: decode, preprocess, inference, postprocess, end-to-end FPS) on the first
backend only (--pipeline-backends), since decode/preprocess/postprocess do not depend on the runtime.
Method: edge_irst.benchmarking (fresh process per configuration and round, >= 10 warm-up, >= 100 runs and
>= 10 s in all, interleaved rounds).

    .venv/bin/python benchmarks/scaling.py            # full run: tables on stdout, benchmarks/results/scaling.json
    .venv/bin/python benchmarks/scaling.py --quick    # smoke run (do not publish)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_irst import benchmarking as bench
from edge_irst.backends import physical_cores

REPO = Path(__file__).resolve().parents[1]
AUTHORS = REPO.parent / "shared" / "reference" / "lw_irstnet_authors"
CALIB = REPO.parent / "shared" / "data" / "sirst"
RESULTS = REPO / "benchmarks" / "results" / "scaling.json"
SIZES = ("256x256", "512x512", "640x512", "1280x1024", "1920x1080")  # W x H
DEFAULT_BACKENDS = "ncnn,onnxruntime,mnn"
QUICK = bench.Method(warmup=2, min_runs=5, min_time_s=0.3, rounds=1)  # smoke runs only


def build_configs(dynamic: Path, fixed: Path, backends: list[str], threads: list[int], sizes: list[tuple],
                  pipeline_backends: list[str]) -> tuple[list, list]:
    configs, skipped = [], []
    for backend in backends:
        missing = bench.installed_reason(backend)
        for policy, folder, label in (("native", dynamic, "dynamic"), ("tile", fixed, "fixed256")):
            if missing:
                skipped.append({"model": str(folder), "backend": backend, "artifact_precision": "fp32",
                                "reason": missing})
                continue
            found, why = bench.plan([(label, str(folder))], [backend], [1], [None], artifact_precisions=["fp32"],
                                    explicit_backends=True)
            if not found:
                skipped += why
                continue
            stages = ("inference", "pipeline") if backend in pipeline_backends else ("inference",)
            configs += [bench.Config(str(folder), backend, threads=n, imgsz=size, policy=policy,
                                     artifact_precision="fp32", stages=stages, label=label, group=policy)
                        for size in sizes for n in threads]
    return configs, skipped


def summary(rows: list[dict], threads: list[int]) -> list[dict]:
    """One entry per (backend, policy, size): median ms per thread count, ms per megapixel, and the speed-up of
    the most threads over one, as the ratio of the pooled medians and per round (bench.round_ratios: the two rows
    of a round ran in the same pass over the configurations, minutes apart at most; a slow phase of the machine
    that hits one round shows as a spread between the rounds instead of moving the row unseen)."""
    out, by_threads = {}, {}
    for r in rows:
        if r.get("status") != "ok" or not r.get("inference"):
            continue
        cfg = r["config"]
        key = (cfg["backend"], cfg["policy"], tuple(cfg["imgsz"]))
        entry = out.setdefault(key, {"backend": cfg["backend"], "policy": cfg["policy"],
                                     "frame": f"{cfg['imgsz'][1]}x{cfg['imgsz'][0]}",
                                     "batch_shape": r["batch_shape"], "median_ms": {}, "cpu_ms_per_frame": {}})
        by_threads.setdefault(key, {})[cfg["threads"]] = r
        entry["median_ms"][str(cfg["threads"])] = r["inference"]["median_ms"]
        entry["cpu_ms_per_frame"][str(cfg["threads"])] = r["inference"]["cpu_ms_per_frame"]
        if r.get("pipeline", {}).get("fps"):
            entry.setdefault("pipeline_fps", {})[str(cfg["threads"])] = r["pipeline"]["fps"]
            entry.setdefault("pipeline_stage_ms", {})[str(cfg["threads"])] = r["pipeline"]["median_ms"]
    top = max(threads)
    for key, entry in out.items():
        h, w = (int(v) for v in entry["frame"].split("x")[::-1])
        one = entry["median_ms"].get("1")
        entry["ms_per_megapixel_t1"] = one / (h * w / 1e6) if one else None
        if one and entry["median_ms"].get(str(top)) and top != 1:
            entry[f"speedup_t{top}_vs_t1"] = one / entry["median_ms"][str(top)]
            per_round = bench.round_ratios(by_threads[key][1], by_threads[key][top])
            if per_round:
                entry[f"speedup_t{top}_vs_t1_rounds"] = [round(v, 3) for v in per_round]
    return list(out.values())


def speedup_cell(entry: dict, top: int) -> str:
    """"1.33x", with the range of the per-round ratios where there are two rounds or more: "1.33x (1.30-1.36)"."""
    ratio = entry.get(f"speedup_t{top}_vs_t1")
    if ratio is None:
        return "-"
    per_round = entry.get(f"speedup_t{top}_vs_t1_rounds") or []
    spread = f" ({min(per_round):.2f}-{max(per_round):.2f})" if len(per_round) >= 2 else ""
    return f"{ratio:.2f}x{spread}"


def summary_text(entries: list[dict], threads: list[int]) -> str:
    header = ("backend", "policy", "frame", "batch") + tuple(f"t{n} ms" for n in threads) + (
        "ms/MP t1", f"t{max(threads)} vs t1 (rounds)") + tuple(f"e2e FPS t{n}" for n in threads)
    rows = []
    for e in entries:
        rows.append((e["backend"], e["policy"], e["frame"], "x".join(map(str, e["batch_shape"])))
                    + tuple(bench._ms(e["median_ms"].get(str(n))) for n in threads)
                    + (bench._ms(e["ms_per_megapixel_t1"], 1), speedup_cell(e, max(threads)))
                    + tuple(bench._ms(e.get("pipeline_fps", {}).get(str(n)), 1) for n in threads))
    return "\nscaling (raw inference medians; e2e FPS where the pipeline stage ran)\n" + bench.text_table(
        rows, header, align="lll")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=AUTHORS / "LW_IRST.pkl",
                        help="checkpoint to export (default: the authors' LW_IRST.pkl in ../shared)")
    parser.add_argument("--dynamic-folder", type=Path, default=None, help="a dynamic-H/W exporter model folder")
    parser.add_argument("--fixed-folder", type=Path, default=None, help="a fixed 256x256 exporter model folder")
    parser.add_argument("--cache", type=Path, default=bench.default_cache())
    parser.add_argument("--backends", default=DEFAULT_BACKENDS)
    parser.add_argument("--pipeline-backends", default=DEFAULT_BACKENDS.split(",")[0],
                        help="backends whose rows also run the full pipeline stage (default: the first)")
    parser.add_argument("--sizes", default=",".join(SIZES), help="W x H frame sizes, comma-separated")
    bench.add_method_arguments(parser, rounds=3, quick=QUICK)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    log = lambda text: print(text, file=sys.stderr)  # noqa: E731
    method = bench.method_from_args(args, QUICK)
    exports = {}
    if args.dynamic_folder is None or args.fixed_folder is None:
        if not args.weights.is_file():
            log(f"{args.weights} is absent: pass --weights, or --dynamic-folder and --fixed-folder")
            return 1
        calib = f"{CALIB}:idx_427/trainval.txt" if (CALIB / "images").is_dir() else None
    dynamic, fixed = args.dynamic_folder, args.fixed_folder
    if dynamic is None:
        dynamic, manifest = bench.cached_export(args.weights, "onnx,ncnn,mnn", "fp32", args.cache, dynamic=True,
                                                calib=calib, log=log)
        exports["dynamic"] = {"folder": str(dynamic), "artifacts": bench.export_summary(manifest)}
    if fixed is None:
        fixed, manifest = bench.cached_export(args.weights, "onnx,ncnn,mnn,tflite", "fp32,fp16,int8", args.cache,
                                              calib=calib, log=log)
        exports["fixed"] = {"folder": str(fixed), "artifacts": bench.export_summary(manifest)}
    threads = sorted({1, 2, physical_cores()})
    sizes = [bench.parse_size(s) for s in args.sizes.split(",") if s.strip()]
    configs, skipped = build_configs(dynamic, fixed, [b.strip() for b in args.backends.split(",") if b.strip()],
                                     threads, sizes, [b.strip() for b in args.pipeline_backends.split(",")])
    machine = bench.machine_info()
    log(f"{len(configs)} configurations x {method.rounds} rounds; {method.describe()}")
    rows = bench.run_configs(configs, method)
    entries = summary(rows, threads)
    command = bench.script_command("benchmarks/scaling.py", argv)
    doc = bench.document(rows, skipped, method, machine, command, benchmark="scaling", export=exports,
                         threads=threads, summary=entries)
    return bench.publish(doc, summary_text(entries, threads), args.out, log)


if __name__ == "__main__":
    sys.exit(main())

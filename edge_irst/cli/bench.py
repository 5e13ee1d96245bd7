"""`edge-irst bench`: latency of artifacts x backends x threads x precisions x input sizes, on this machine.

    edge-irst bench                                           the bundled model on every installed backend
    edge-irst bench --model LW_IRST.onnx --backend all --threads 1,2,4 --imgsz 256,512
    edge-irst bench --model exported/ --artifact-precision fp32,int8 --json bench.json
    edge-irst bench --load bench.json --compare lw_irstnet:fp32/onnxruntime/t1     ratios against a row, no rerun
    edge-irst bench ... --min-runs 5 --min-time 0.5 --warmup 2                         a smoke run

Every configuration runs in a fresh worker process (see edge_irst.benchmarking for the method and why). Results
go to stdout (a table) and, with --json, to a file; the progress bar and logs go to stderr. Backends whose
runtime is not installed are listed as skipped with the pip extra that installs them; nothing needs torch unless
a PyTorch checkpoint is benchmarked.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from edge_irst.errors import InputError, ModelFileError, UnknownNameError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("input sizes are N (square) or WxH (width x height, as cameras quote it). --policy auto: native for "
                "a dynamic-size artifact, tile for a fixed-size one when the frame differs from its size, resize "
                "otherwise. Row names (for --compare): label/backend/t<threads>[/WxH][/policy][/precision]; a "
                "unique part of a name is enough.")
    what = p.add_argument_group("what to measure")
    what.add_argument("--model", action="append", metavar="[LABEL=]PATH",
                      help="artifact file or exporter model folder; repeat for several (default: the bundled model)")
    what.add_argument("--backend", default="all",
                      help="comma-separated backends, or 'all' (every registered backend that reads the model; "
                           "the uninstalled ones are listed as skipped)")
    what.add_argument("--threads", default="all",
                      help="comma-separated thread counts; 'all' = physical cores (default: all)")
    what.add_argument("--imgsz", default=None,
                      help="comma-separated input frame sizes, N or WxH (default: each artifact's own size)")
    what.add_argument("--policy", default="auto", choices=("auto", "resize", "native", "tile"),
                      help="frame-size policy for frames that differ from the artifact's size (default: auto)")
    what.add_argument("--artifact-precision", default="fp32",
                      help="which artifacts of a model folder: comma-separated fp32,fp16,int8 or 'all' (default: "
                           "fp32); a single file is what it is")
    what.add_argument("--precision", default="auto",
                      help="runtime arithmetic, comma-separated (auto, fp32, fp16, bf16; MNN: low/normal/high); "
                           "backends that cannot apply one are skipped for it")
    what.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="another backend option for every configuration: spin=0/1 (onnxruntime), xnnpack=0/1 "
                           "(tflite), big_cores=1, device=..., delegate=... (tflite); backends that do not apply "
                           "it are listed as skipped")
    what.add_argument("--stages", default="inference,pipeline",
                      help="inference (backend.run on a prepared tensor) and/or pipeline (Detector.stream on "
                           "synthetic frames: decode/preprocess/inference/postprocess); default both")
    method = p.add_argument_group("method (defaults: >= 10 warm-up, >= 100 runs and >= 10 s)")
    method.add_argument("--warmup", type=int, default=10, help="warm-up runs after the first inference (default 10)")
    method.add_argument("--min-runs", type=int, default=100, help="at least this many timed runs (default 100)")
    method.add_argument("--min-time", type=float, default=10.0, help="and at least this many seconds (default 10)")
    method.add_argument("--rounds", type=int, default=1,
                        help="interleave: split runs over N rounds, each running every configuration once (order "
                             "balanced over rounds), so drift in other load hits all rows alike (default 1)")
    method.add_argument("--timeout", type=float, default=None, help="seconds per worker process before it is killed")
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write the machine-readable result here")
    out.add_argument("--compare", metavar="NAME", help="print speed-ups of every row against the row NAME")
    out.add_argument("--load", metavar="PATH", help="render a saved --json result (with --compare) instead of running")
    out.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _split(value: str) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _nonempty(flag: str, value: str, example: str) -> list[str]:
    """_split(value), refusing an empty list: ',' would otherwise plan nothing and blame the model."""
    items = _split(value)
    if not items:
        raise InputError(f"{flag} {value!r} names nothing; expected e.g. {example}")
    return items


def _threads(value: str) -> list:
    from edge_irst.backends import physical_cores

    counts = []
    for item in _nonempty("--threads", value, "1,2,4 or all"):
        if item.lower() == "all":
            count = physical_cores()
        else:
            try:
                count = int(item)
            except ValueError:
                raise InputError(f"--threads {value!r}: {item!r} is not a thread count; expected e.g. 1,2,4 or all") \
                    from None
            if count < 1:
                raise InputError(f"--threads {value!r}: thread counts are >= 1 ('all' = physical cores)")
        if count not in counts:
            counts.append(count)
    return counts


def _models(values) -> list[tuple]:
    if not values:
        from edge_irst.assets import default_model

        return [(None, str(default_model()))]
    models = []
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or Path(value).exists():
            label, path = None, value
        if not Path(path).exists():
            raise ModelFileError(f"--model {value!r}: {path} does not exist (an artifact file or a model folder "
                                 f"written by `edge-irst export`)")
        models.append((label or None, path))
    return models


def _option_value(key: str, text: str):
    lowered = text.strip().lower()
    if key in ("spin", "xnnpack", "big_cores"):
        if lowered in ("1", "true", "on", "yes"):
            return True
        if lowered in ("0", "false", "off", "no"):
            return False
        raise InputError(f"--option {key}={text!r}: expected on/off (1/0)")
    return text


def _options(values: list[str]) -> dict:
    from edge_irst.backends import BackendOptions

    allowed = [n for n in BackendOptions.names() if n not in ("threads", "precision", "warmup")]
    options = {}
    for item in values:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise InputError(f"--option {item!r}: expected KEY=VALUE, e.g. spin=0")
        if key not in allowed:
            raise UnknownNameError("backend option", key, allowed)
        options[key] = _option_value(key, value)
    return options


def _backends(value: str) -> tuple[list[str], bool]:
    from edge_irst.backends import list_backends

    if value.strip().lower() == "all":
        return list_backends(), False
    names = _nonempty("--backend", value, "onnxruntime,ncnn or all")
    for name in names:
        if name not in list_backends():
            raise UnknownNameError("backend", name, list_backends())
    return names, True


def run(args) -> int:
    from edge_irst import benchmarking as bench

    if args.load:
        try:
            doc = json.loads(Path(args.load).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"--load {args.load}: not a readable bench JSON ({exc})") from exc
        schema = doc.get("schema") if isinstance(doc, dict) else None
        if schema != bench.SCHEMA or not isinstance(doc.get("rows"), list):
            found = f"schema {schema!r}" if schema != bench.SCHEMA else "no list of rows"
            raise InputError(f"--load {args.load}: {found}, expected a {bench.SCHEMA!r} document (a file "
                             f"written by edge-irst bench --json or benchmarks/backends.py)")
    else:
        if args.json:
            _check_writable(args.json)
        doc = _measure(args, bench)
    comparison = None
    if args.compare:
        try:
            comparison = bench.compare(doc["rows"], args.compare)
        except InputError as exc:  # after a run only a failed baseline gets here: _measure checked the name
            if args.load:
                raise
            # the rows are measured: show them and write --json without the ratios rather than lose the run
            print(f"edge-irst bench: warning: {exc}; no ratios shown", file=sys.stderr)
    if comparison:
        doc["compare"] = comparison
    print(bench.render(doc, comparison))
    if args.json:
        try:
            print(f"wrote {bench.write_json(doc, args.json)}", file=sys.stderr)
        except OSError as exc:
            raise InputError(f"--json {args.json}: cannot be written ({exc})") from exc
    return 0 if all(r.get("status") == "ok" for r in doc["rows"]) else 1


def _check_writable(path: str) -> None:
    """Refuse a --json path that cannot be written before the run rather than after it (minutes of measuring)."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"--json {path}: is a folder; expected a file path, e.g. {target / 'bench.json'}")
    parent = next(p for p in target.absolute().parents if p.exists())  # write_json creates the missing ones
    if not parent.is_dir():
        raise InputError(f"--json {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--json {path}: cannot write in {parent} (check its permissions)")
    if target.exists() and not os.access(target, os.W_OK):
        raise InputError(f"--json {path}: the file exists and is not writable")


def _measure(args, bench) -> dict:
    method = bench.Method(warmup=args.warmup, min_runs=args.min_runs, min_time_s=args.min_time, rounds=args.rounds,
                          timeout_s=args.timeout)
    stages = _split(args.stages)
    for stage in stages:
        if stage not in bench.STAGE_NAMES:
            raise UnknownNameError("stage", stage, bench.STAGE_NAMES)
    artifact_precisions = (["fp32", "fp16", "int8"] if args.artifact_precision.strip().lower() == "all"
                           else _nonempty("--artifact-precision", args.artifact_precision, "fp32,int8 or all"))
    for precision in artifact_precisions:
        if precision not in ("fp32", "fp16", "int8"):
            raise UnknownNameError("artifact precision", precision, ("fp32", "fp16", "int8", "all"))
    backends, explicit = _backends(args.backend)
    # one size however it is written (256 and 256x256), as repeated thread counts are measured once
    sizes = ([None] if args.imgsz is None else
             list(dict.fromkeys(bench.parse_size(s) for s in _nonempty("--imgsz", args.imgsz, "256,640x512"))))
    configs, skipped = bench.plan(_models(args.model), backends, _threads(args.threads), sizes, policy=args.policy,
                                  precisions=_split(args.precision) or ["auto"],
                                  artifact_precisions=artifact_precisions, options=_options(args.option),
                                  stages=stages, explicit_backends=explicit)
    machine = bench.machine_info()
    if not configs:
        raise InputError("nothing to measure: " + ("; ".join(f"{s['backend']}: {s['reason']}" for s in skipped)
                                                   or "no backend reads the given model"))
    if args.compare:  # before measuring: a baseline name that matches no row, or several, would waste the run
        bench.find_row([{"name": c.name} for c in configs], args.compare)
    print(f"edge-irst bench: {len(configs)} configurations x {method.rounds} round(s); {method.describe()}",
          file=sys.stderr)
    rows = bench.run_configs(configs, method, progress=not args.no_progress)
    return bench.document(rows, skipped, method, machine, _command(args))


def _command(args) -> str:
    """The command that reproduces this run, rebuilt from the parsed arguments (whatever way it was started)."""
    words = ["edge-irst", "bench"]
    for model in args.model or []:
        words += ["--model", model]
    for flag, value in (("--backend", args.backend), ("--threads", args.threads), ("--imgsz", args.imgsz),
                        ("--policy", args.policy), ("--artifact-precision", args.artifact_precision),
                        ("--precision", args.precision), ("--stages", args.stages), ("--warmup", args.warmup),
                        ("--min-runs", args.min_runs), ("--min-time", args.min_time), ("--rounds", args.rounds)):
        if value is not None:
            words += [flag, str(value)]
    for option in args.option:
        words += ["--option", option]
    return shlex.join(words)

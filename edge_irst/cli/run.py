"""`edge-irst run`: detect targets on images, a video, a camera, a stream or synthetic frames.

    edge-irst run                                            bundled model, synthetic frames, best backend
    edge-irst run --source clip.avi --model LW_IRST.onnx --save-json out.jsonl --save-video out.avi
    edge-irst run --source 0 --policy tile --filter authors  a camera, native-resolution tiles, the paper's filter
    edge-irst run --source rtsp://cam/stream --max-frames 1000 --json

Results: the summary on stdout (a table, or JSON with --json); per-frame results go to the --save-* files; a live
status line (FPS, targets, latency) on stderr when it is a terminal; logs on stderr. Exit 0 ok, 1 failure (model,
source, output), 2 usage error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM: `kill`, systemd, docker stop);
interrupted or terminated, the outputs are closed intact and the summary printed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from edge_irst.cli import THREADS_HELP, runtime_threads
from edge_irst.errors import EdgeIrstError, InputError

log = logging.getLogger("edge_irst.cli.run")


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected two numbers LO,HI, e.g. 0,16383") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO < HI")
    return lo, hi


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("input")
    src.add_argument("--source", default="synthetic",
                     help="image, folder, glob, video, camera index (0) or /dev/videoN, rtsp/http URL, or "
                          "synthetic[:WxH,targets=N,frames=N,seed=N,bits=N,fps=F] (default: synthetic)")
    src.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    src.add_argument("--raw-range", type=_pair, default=None, metavar="LO,HI",
                     help="fixed mapping of 14/16-bit raw frames: raw LO..HI -> 0..255 (default: percentiles)")
    src.add_argument("--raw-percentiles", type=_pair, default=None, metavar="LO,HI",
                     help="per-frame percentile stretch of raw frames when --raw-range is not given "
                          "(default: RawMapping's, 0.5 to 99.99 or higher: at most 7 pixels above the top)")
    src.add_argument("--reconnect-retries", type=int, default=5, metavar="N",
                     help="reopening attempts when a camera/stream stops delivering (default: 5)")
    src.add_argument("--reconnect-backoff", type=float, default=0.5, metavar="S",
                     help="first wait before reopening, doubled per attempt up to 8 s; a longer first wait is "
                          "kept for every attempt (default: 0.5)")
    src.add_argument("--reconnect-at-start", action="store_true",
                     help="retry the first opening too, on the same schedule (a camera or stream that comes up "
                          "after the run starts); without it a source that cannot be opened fails at once")

    model = p.add_argument_group("model and backend")
    model.add_argument("--model", default=None,
                       help="artifact file or exported model folder (default: the bundled model)")
    model.add_argument("--backend", default=None, help="runtime (default: the fastest installed one for the model)")
    model.add_argument("--threads", type=runtime_threads, default=None, help=THREADS_HELP)
    model.add_argument("--device", default=None, help="cpu (default) or an accelerator the backend knows")
    model.add_argument("--delegate", default=None, help="TFLite external delegate library")
    model.add_argument("--fallback", choices=("cpu",), default=None,
                       help="run on the CPU when the device/delegate is unavailable (default: error)")
    model.add_argument("--artifact-precision", choices=("fp32", "fp16", "int8"), default=None,
                       help="which artifact of a model folder (default: fp32)")
    model.add_argument("--policy", choices=("resize", "native", "tile"), default="resize",
                       help="frame size: squeeze to the model input (resize, the authors'), the frame's own size "
                            "(native: dynamic-size artifacts), or model-size tiles (tile) (default: resize)")
    model.add_argument("--tile-overlap", type=int, default=32, metavar="PX",
                       help="minimum overlap of neighbouring tiles (default: 32)")

    post = p.add_argument_group("postprocessing")
    post.add_argument("--threshold", type=float, default=None,
                      help="target pixels: logit > threshold (default: the model contract's, 0.0)")
    post.add_argument("--filter", choices=("none", "authors"), default="none",
                      help="target filter preset: none, or authors (area 5..100, ratio 0.2..5) (default: none)")
    post.add_argument("--size-min", type=float, default=None, help="drop targets of fewer pixels (bound)")
    post.add_argument("--size-max", type=float, default=None, help="drop targets of more pixels (bound)")
    post.add_argument("--ratio-min", type=float, default=None, help="drop targets with box w/h below (bound)")
    post.add_argument("--ratio-max", type=float, default=None, help="drop targets with box w/h above (bound)")
    post.add_argument("--inclusive", action="store_true",
                      help="bounds keep equality (<=, the authors' GUI) instead of strict < (their real-time code)")
    post.add_argument("--control", default=None, metavar="stdin|PATH",
                      help="change threshold/filter while it runs: lines such as 'threshold=0.5 size_min=5', "
                           "'filter=authors', 'show', 'quit' from stdin, a FIFO or a file (watched for new lines; "
                           "see edge_irst.control)")

    out = p.add_argument_group("output")
    out.add_argument("--save-json", default=None, metavar="PATH", help="JSON Lines, one object per frame")
    out.add_argument("--save-csv", default=None, metavar="PATH", help="CSV, one row per target")
    out.add_argument("--save-video", default=None, metavar="PATH", help="annotated video (.avi, .mp4, .mkv, .mov)")
    out.add_argument("--save-dir", default=None, metavar="DIR", help="annotated PNG per frame")
    out.add_argument("--show", action="store_true", help="show annotated frames in a window (needs a GUI OpenCV)")
    out.add_argument("--json", action="store_true", help="summary as JSON on stdout")


def _target_filter(args):
    from dataclasses import replace

    from edge_irst.postprocess import TargetFilter

    bounds = {k: getattr(args, k) for k in ("size_min", "size_max", "ratio_min", "ratio_max")
              if getattr(args, k) is not None}
    if args.inclusive:
        bounds["inclusive"] = True
    return replace(TargetFilter.preset(args.filter), **bounds)


def _raw_mapping(args):
    from edge_irst.preprocess import RawMapping

    if args.raw_range is not None:
        return RawMapping("fixed", *args.raw_range)
    return RawMapping("percentile", *args.raw_percentiles) if args.raw_percentiles else RawMapping()


def _open_sinks(args, detector, source):
    from edge_irst.sinks import CsvSink, ImageFolderSink, JsonlSink, SinkSet, VideoSink, WindowSink

    sinks = SinkSet()
    try:
        if args.save_json:
            sinks.sinks.append(JsonlSink(args.save_json, source.name, detector.policy))
        if args.save_csv:
            sinks.sinks.append(CsvSink(args.save_csv, source.name))
        if args.save_dir:
            sinks.sinks.append(ImageFolderSink(args.save_dir, detector.raw))
        # After the sinks that can take a frame back (SinkSet): the video and the window cannot.
        if args.save_video:
            sinks.sinks.append(VideoSink(args.save_video, source.fps, detector.raw))
        if args.show:
            sinks.sinks.append(WindowSink(f"edge-irst {source.name}", detector.raw))
    except BaseException:
        sinks.close()
        raise
    return sinks


def run(args) -> int:
    from edge_irst.control import ControlChannel
    from edge_irst.pipeline import Detector, StreamStats
    from edge_irst.progress import Progress
    from edge_irst.sources import Reconnect, open_source
    from edge_irst.synthetic import match_truth

    if args.max_frames is not None and args.max_frames < 0:
        raise InputError(f"--max-frames {args.max_frames}: expected N >= 0")
    reconnect = Reconnect(retries=args.reconnect_retries, backoff_s=args.reconnect_backoff,
                          at_start=args.reconnect_at_start)
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_interrupts())
        detector = stack.enter_context(Detector(
            args.model, args.backend, threads=args.threads, device=args.device, delegate=args.delegate,
            fallback=args.fallback, artifact_precision=args.artifact_precision, threshold=args.threshold,
            filter=_target_filter(args), policy=args.policy, raw=_raw_mapping(args), tile_overlap=args.tile_overlap))
        source = stack.enter_context(open_source(args.source, reconnect))
        sinks = _open_sinks(args, detector, source)
        control = ControlChannel(detector, args.control, on_quit=source.stop).start() if args.control else None
        stats, truth = StreamStats(), {"targets": 0, "found": 0, "false": 0, "max_error_px": 0.0}
        total = args.max_frames if args.max_frames is not None else source.length
        if args.max_frames is not None and source.length is not None:
            total = min(args.max_frames, source.length)
        status = Progress(total, "run")
        outcome, failure = "completed", None
        raw_frames = 0  # frames deeper than 8 bits: the only ones a raw mapping (--raw-range) applies to
        try:
            stats.start()
            with contextlib.closing(detector.stream(source, args.max_frames, reconnect)) as results:
                for result in results:
                    with interrupt_after_block():  # a stop between the two would count a frame not written
                        sinks.write(result)
                        stats.add(result)
                    raw_frames += result.frame.image.dtype.itemsize > 1
                    if result.frame.truth is not None:
                        _tally(truth, match_truth(result.detections.x, result.detections.y,
                                                  result.frame.truth.centers))
                    status.update(postfix=f"{stats.fps:.1f} fps  {len(result.detections)} targets  latency "
                                          f"{result.timings.latency:.0f} ms  dropped {result.dropped}")
                    if sinks.stop_requested:
                        outcome = "stopped from the window"
                        break
                    if control is not None and control.quit_requested.is_set():
                        break
            # A quit also stops a live source waiting for its next frame (a reconnection): the loop then ends here.
            if outcome == "completed" and control is not None and control.quit_requested.is_set():
                outcome = "stopped by a control quit"
        except KeyboardInterrupt as exc:
            outcome = "terminated (SIGTERM)" if exc.args == ("SIGTERM",) else "interrupted"
        except EdgeIrstError as exc:
            outcome, failure = "failed", exc
        finally:
            if control is not None:  # no line applies to a run that has ended
                control.close()
            status.close()
            try:
                sinks.close()
            except EdgeIrstError as exc:  # a sink that fails as it closes: reported like a write
                if failure is None:
                    outcome, failure = "failed", exc
            stats.finish(source)
        summary = _summary(detector, source, stats, truth if truth["targets"] else None, outcome, args)
        summary["raw_frames"] = raw_frames
        if (args.raw_range or args.raw_percentiles) and stats.frames and not raw_frames:
            log.warning(
                "--raw-range / --raw-percentiles had no effect: they map 14/16-bit raw frames, and the %d frames "
                "of %s were 8-bit", stats.frames, source.name)
        if control is not None:
            summary["control"] = {"source": str(args.control), "applied": control.applied}
    if args.json:
        json.dump(summary, sys.stdout, indent=2, default=str)
        print()
    else:
        print(_summary_text(summary))
    if failure is not None:
        raise failure
    return {"interrupted": 130, "terminated (SIGTERM)": 143}.get(outcome, 0)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt("SIGTERM") inside the block, so a terminated run ends like Ctrl-C: outputs
    closed intact (a video's index is only written when it is released) and the summary printed. Left alone
    outside the main thread and where SIGTERM is not at its default (ignored, or someone else's handler)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def interrupt_after_block():
    """Holds a SIGINT / SIGTERM that arrives inside the block and raises it as KeyboardInterrupt at the block's
    end, so the outputs and the summary agree on what was done. A signal that would not interrupt (ignored, as
    SIGINT is for a job a script puts in the background, or at its default) is left as it is; a no-op outside the
    main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if callable(signal.getsignal(s))]
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if pending:
        raise KeyboardInterrupt(signal.Signals(pending[0]).name)


def _tally(truth: dict, match) -> None:
    truth["targets"] += match.found + match.missed
    truth["found"] += match.found
    truth["false"] += match.false
    if match.found:
        truth["max_error_px"] = max(truth["max_error_px"], float(match.errors.max()))


OUTPUT_KEYS = ("save_json", "save_csv", "save_video", "save_dir")


def _summary(detector, source, stats, truth, outcome: str, args) -> dict:
    described = detector.describe()
    summary = {
        "outcome": outcome,
        "source": source.stats(),
        **stats.summary(),
        "model": described["model"], "artifact": described["artifact"], "backend": described["backend"],
        "options_in_effect": described["options_in_effect"],
        "policy": {k: described[k] for k in ("policy", "model_input", "pad", "tile", "overlap", "merge")
                   if k in described},
        "threshold": described["threshold"], "filter": described["filter"],
        "raw_mapping": described["raw_mapping"],
        "postprocess": described["postprocess"],
    }
    # An output is made when its first frame comes (the video) or at start (the others): a run that ends before
    # a frame lists what it never made apart, rather than as written.
    summary["outputs"], summary["outputs_not_written"] = {}, {}
    for key in OUTPUT_KEYS:
        path = getattr(args, key)
        if path:
            summary["outputs" if Path(path).exists() else "outputs_not_written"][key] = path
    if truth is not None:
        summary["synthetic_truth"] = {**truth, "radius_px": 1.5,
                                      "recall": round(truth["found"] / truth["targets"], 4)}
    return summary


def _summary_text(s: dict) -> str:
    from edge_irst.postprocess import TargetFilter

    options = s["options_in_effect"]
    medians = s["median_ms"]
    source = s["source"]
    threads = options.get("threads")
    policy = s["policy"]
    policy_text = policy["policy"] + (f" (model input {policy['model_input'][0]}x{policy['model_input'][1]})"
                                      if "model_input" in policy else
                                      f" ({policy['tile'][0]}x{policy['tile'][1]} tiles, overlap "
                                      f"{policy['overlap']} px)" if "tile" in policy else f" ({policy.get('pad')})")
    rows = [
        ("outcome", s["outcome"]),
        ("source", f"{source['source']} ({source['kind']})"),
        ("model", s["artifact"]),
        ("backend", f"{s['backend']}, threads {threads} ({options.get('threads_source', 'as requested')}"
                    f"{_auto_threads_text(options.get('threads_auto'))}), device {options.get('device', 'cpu')}"),
        ("policy", policy_text),
        ("threshold", f"logit > {s['threshold']:g}; filter: {TargetFilter(**s['filter']).describe()}"),
        ("postprocess", f"{s['postprocess']['implementation']} ({s['postprocess']['detail']})"),
        ("frames", f"{s['frames']}  skipped {s['skipped']}  dropped {s['dropped']}  reconnects "
                   f"{source['reconnects']}  targets {s['targets']}"),
        ("FPS", f"{s['fps']:.1f} end to end (decode + preprocess + inference + postprocess + output), "
                f"{s['wall_s']:.2f} s wall"),
        ("median ms", "  ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in medians.items())),
        ("latency ms", f"median {_ms(s['latency_ms']['median'])}  p95 {_ms(s['latency_ms']['p95'])} "
                       f"(capture to result)"),
    ]
    if "synthetic_truth" in s:
        t = s["synthetic_truth"]
        rows.append(("ground truth", f"{t['found']}/{t['targets']} synthetic targets found within "
                                     f"{t['radius_px']} px (max error {t['max_error_px']:.2f} px), "
                                     f"{t['false']} false detections"))
    for key, path in s["outputs"].items():
        rows.append((key.replace("_", "-"), path))
    for key, path in s.get("outputs_not_written", {}).items():
        rows.append((key.replace("_", "-"), f"{path} (not written: no frame reached it)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _auto_threads_text(choice) -> str:
    """"; chosen by --threads auto: 1 thread 6.80 ms, 2 threads 11.50 ms" (medians measured at load time)."""
    if not choice:
        return ""
    measured = ", ".join(f"{n} {'thread' if n == '1' else 'threads'} {ms:.2f} ms"
                         for n, ms in choice["median_ms"].items())
    return f"; chosen by --threads auto: {measured}"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"

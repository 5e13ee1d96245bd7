"""Render benchmarks/results/*.json as the Markdown tables of the README's "Speed" section.

The README holds the tables between `<!-- speed:begin -->` and `<!-- speed:end -->`; this script rewrites that
block from the JSON files (a missing file is named as not yet measured), so the tables always say which run, date,
machine and command they come from. The block opens with every target of the benchmarks issue against the latest
committed result ("Targets at a glance"). Nothing is measured here.

    .venv/bin/python benchmarks/make_readme_tables.py          # rewrite the README block
    .venv/bin/python benchmarks/make_readme_tables.py --check  # exit 1 if the README is not up to date
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backends import headline_sentence, matchup, target_sentence  # benchmarks/backends.py, beside this script
from postprocess import reach_note, thread_gain_note
from scaling import speedup_cell, summary
from edge_irst.benchmarking import BUSY_SHARE, machine_line, quartiles, threads_cell, within_spread

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def provenance(doc: dict) -> str:
    machine = doc.get("machine") or {}
    load = doc.get("load_average_at_end")
    end = f"; load average at end {' '.join(f'{v:.2f}' for v in load)}" if load else ""
    return (f"*Measured {doc.get('created', '?')[:16].replace('T', ' ')} UTC on {machine_line(machine)}{end}. "
            f"Command: `{doc.get('command', '?')}`.*")


def echoes_threads(row: dict) -> bool:
    """Whether a row's thread count in effect is only the request echoed back: its backend cannot read it from the
    runtime (TFLite), and says so in threads_source."""
    return (row.get("threads_source") or "").startswith("requested")


def backends_threads_cell(row: dict) -> str:
    """The table's threads cell, as benchmarking.render writes it ('2>2 b3': requested > in effect, threads busy),
    with a '?' after a count in effect that is only the request echoed."""
    cell = threads_cell(row)
    if not echoes_threads(row):
        return cell
    counts, _, busy = cell.partition(" ")
    return f"{counts}?" + (f" {busy}" if busy else "")


def backends_threads_note(rows: list[dict]) -> str:
    """The footnote to the table's threads column."""
    echoed = sorted({r.get("backend") or "?" for r in rows if echoes_threads(r)})
    return ("threads req>eff busy: the threads requested > those in effect as the runtime reports them"
            + (f" (? = {', '.join(echoed)} cannot report them: the request echoed back)" if echoed else "")
            + f"; bN = N of the process's threads were busy (>= {BUSY_SHARE:.0%} of the timed window's wall time), "
              "whichever threads they are, so N can exceed the threads in effect.")


def backends_precision_note(rows: list[dict]) -> str:
    """The footnote to the table's precision column; MNN rows of runs before its arithmetic was recorded name the
    bare mode."""
    bare = sorted({r["precision_in_effect"] for r in rows
                   if r.get("backend") == "mnn" and r.get("precision_in_effect") in ("normal", "high")})
    return ("precision: the arithmetic in effect as the runtime reports it (int8+fp32: the int8 convolutions, the "
            "other layers in fp32; MNN: the arithmetic of its mode, the mode in brackets)"
            + (f"; MNN rows reading {' / '.join(bare)} come from a run that recorded the mode alone, which is fp32 "
               "on the CPU (MNN documents Normal as High there)" if bare else "") + ".")


def backends_grey_note(rows: list[dict]) -> str:
    """What the ours-grey rows are, where the run has them ("" otherwise)."""
    if not any(r["name"].startswith("ours-grey:") for r in rows):
        return ""
    return ("ours-grey: the same checkpoint exported with `--grey-input` (models/grey_input.py), timed on its "
            "1x1x256x256 input where the other rows take 1x3x256x256; on a grey frame it computes the RGB model's "
            "logits (fp32 to float rounding; int8 calibrated on its own), so it competes in the targets below.")


def backends_section(doc: dict) -> str:
    rows = [r for r in doc["rows"] if r.get("status") == "ok"]
    torch_ms = {r["threads_requested"]: r["inference"]["median_ms"] for r in rows if r.get("group") == "pytorch"}
    rows.sort(key=lambda r: (r["threads_requested"], r["inference"]["median_ms"]))
    body = [[r["name"], r.get("group") or "-", backends_threads_cell(r),
             r.get("precision_in_effect") or "-", number(r["inference"]["median_ms"]),
             number(r["inference"]["p90_ms"]), number(r["inference"]["fps"], 1),
             number(r["inference"]["cpu_ms_per_frame"]), number(r.get("peak_rss_mb"), 0),
             number(torch_ms[r["threads_requested"]] / r["inference"]["median_ms"]) + "x"
             if r["threads_requested"] in torch_ms else "-"]
            for r in rows]
    lines = ["### Backends: LW-IRSTNet 256x256, raw inference (`benchmarks/backends.py`)", "", provenance(doc), "",
             table(["row", "group", "threads req>eff busy", "precision", "median ms", "p90 ms", "FPS", "CPU ms/frame",
                    "peak RSS MB", "x vs PyTorch eager"], body), "", backends_threads_note(rows), "",
             backends_precision_note(rows), ""]
    grey_note = backends_grey_note(rows)
    if grey_note:
        lines += [grey_note, ""]
    lines.append("Fastest backend vs PyTorch eager (the paper reports 2.6x with OpenCV DNN):")
    lines += [f"- {headline_sentence(h)}" for h in doc.get("headline", [])]
    lines.append("\nTargets (the sweep's medians [min..max of its round medians]; the verdict from the head-to-head: "
                 "median of the per-round ratios over paired rounds of just these rows, run after the sweep; CPU "
                 "time per frame beside):")
    lines += [f"- {target_sentence(t)}" for t in doc.get("targets", [])]
    skipped = doc.get("skipped") or []
    if skipped:
        lines.append("- Skipped: " + "; ".join(sorted({f"{s['backend']}: {s['reason']}" for s in skipped})) + ".")
    return "\n".join(lines)


def head_to_head_note(target: dict) -> str:
    """The quartiles of a backends target's paired per-round ratios, and whether the required ratio lies between
    them (results from before the head-to-head have no rounds)."""
    ratios = target.get("head_to_head_ratios")
    if not ratios:
        return ""
    low, high = quartiles(ratios)
    within = ", within the spread of the rounds" if within_spread((low, high), target["required"]) else ""
    return f"; paired rounds' quartiles {low:.2f}-{high:.2f}x{within}"


def spread_note(target: dict) -> str:
    """The per-round ratios' quartiles of a postprocess target's worst map, and whether the required ratio lies
    between them (the verdict's `clear`, from benchmarking.within_spread; results from before they were kept
    have none)."""
    quartiles = target.get("worst_quartiles")
    if not quartiles:
        return ""
    within = "" if target.get("clear", True) else ", within the spread of the rounds"
    return f"; rounds' quartiles {quartiles[0]:.2f}-{quartiles[1]:.2f}x{within}"


def postprocess_section(doc: dict) -> str:
    threads = doc["machine"]["opencv_default_threads"]
    many = f"cv2 CC ({threads} thr)"
    body = []
    for r in doc["results"]:
        wall, speed = r["wall_us"], r["speedup_wall"]
        body.append([r["size"], r["map"], r["targets"], number(wall["ours"], 1), number(wall["cv2 CC (1 thr)"], 1),
                     number(speed["cv2 CC (1 thr)"], 1) + "x", number(wall.get("ours auto"), 1),
                     number(wall.get(many), 1), number(speed.get(many), 1) + "x",
                     number(speed.get("authors (1 thr)"), 1) + "x", number(wall.get("map read"), 1),
                     number(speed.get("ours, 1 map"), 2) + "x"])
    runs = doc.get("auto_runs_for_bands")
    sparse_rule = f", one band after a frame with fewer than {runs:,} runs" if runs else ""
    variants = {}  # frame -> variants per kind, in the order of the rows
    for r in doc["results"]:
        variants.setdefault(r["size"], r["variants"])
    variant_note = ", ".join(f"{count} at {size}" for size, count in variants.items())
    lines = ["### Postprocess: C labeller vs OpenCV (`benchmarks/postprocess.py`)", "", provenance(doc), "",
             "Wall-clock microseconds per call, each call on a new map (the variants of each kind in turn, "
             f"{variant_note}, copied into one buffer before the call, untimed), as in a stream; a branch "
             "predictor learns a few dozen maps taken in turn (ours took 13.3 us on 256x256 maps with 50 targets "
             "cycling 16 of them, 17.4 us cycling 128), so the kinds have many; 50 drifting = consecutive frames of "
             "one scene whose 50 targets drift up to 2 px (logits drawn anew each frame), as a stream of slow "
             "targets brings them (shown, no target); each sample after as many untimed calls "
             "of the same method (a method runs 1.5-2x slower for tens of calls after OpenCV's, until the branch "
             "predictor has relearnt it) and the methods in an order balanced over the rounds; ours = labelling "
             "with every statistic "
             "(box, centroids, weighted centroid, peak, mean logit), threshold fused, on one thread; "
             f"ours auto = `threads=\"auto\"` (row bands on up to {threads} threads from "
             f"{doc.get('auto_pixels_per_thread', 0) * 2:,} pixels{sparse_rule}), compared with OpenCV at its default "
             f"{threads} threads; cv2 = threshold + one `connectedComponentsWithStats` call; authors = their full "
             "procedure (threshold, components, Python filter loop, second pass) against ours with the same "
             "filter. Times are median samples; a speed-up is the median over the rounds of the per-round ratio "
             "(both samples taken milliseconds apart), so it can differ a little from the ratio of the medians "
             "shown; a target lists the first and third quartiles of those ratios on its worst map, and says when "
             "the required ratio lies between them (a run as long could have gone the other way). map read = one "
             "numpy `max` over the map on one thread: about the least time any one-thread labeller can take, "
             "since it must read every pixel. 1 map repeated = how much faster ours looks when "
             "fed one variant again and again (the CPU's branch predictor learns it), which is why every other "
             "column takes new maps.", "",
             table(["frame", "map", "targets", "ours us", "cv2 1 thr us", "x vs cv2", "ours auto us",
                    f"cv2 {threads} thr us", f"x auto vs cv2 {threads} thr", "x vs authors", "map read us",
                    "ours on 1 map repeated"], body),
             ""]
    for t in doc.get("targets", []):
        verdict = "met" if t["met"] else "**not met**"
        lines.append(f"- {t['maps']} {t['size']} vs {t['against']} ({t['clock']}): worst {t['worst']:.2f}x "
                     f"({t['worst_map']}{spread_note(t)}), required {t['required']:g}x: {verdict}{reach_note(t)}"
                     f"{thread_gain_note(t)}.")
    stress = doc.get("stress")
    if stress:
        slower = " — slower than OpenCV" if stress["worst"] < 1 else ""
        lines.append(f"- checkerboard (a stress map beyond the issue's dense maps, no target) vs {stress['against']} "
                     f"({stress['clock']}): worst {stress['worst']:.2f}x ({stress['worst_map']}){slower}.")
    return "\n".join(lines)


def pipeline_section(doc: dict) -> str:
    body = []
    for mode, r in doc["results"].items():
        stages = r.get("stage_median_ms") or {}
        body.append([mode, number(r["fps"], 1), number(r.get("overhead_percent_paired"), 1),
                     number(r["overhead_percent_wall"], 1),
                     number(r["cpu_ms_per_frame"]), number(r["overhead_percent_cpu"], 1),
                     " / ".join(number(stages.get(s)) for s in ("decode", "preprocess", "inference", "postprocess"))
                     if stages else "-"])
    lines = ["### Pipeline overhead (`benchmarks/pipeline.py`)", "", provenance(doc), "",
             f"`{doc['backend']}` ({Path(doc['artifact']).name}, {doc['threads_in_effect']} thread in effect), "
             f"{doc['input']}; end to end includes {doc['end_to_end_includes']}.", "",
             table(["mode", "FPS", "overhead % (paired rounds)", "overhead % (wall)", "CPU ms/frame",
                    "overhead % (CPU)", "decode / preprocess / inference / postprocess ms"], body), "",
             "Overhead against raw inference on the same backend (target <= 10 %). Paired rounds: the median over "
             "the rounds of each round's overhead against that round's raw inference (the verdict); wall: the "
             "median rounds' FPS set against each other."
             + (f" `Detector.stream`'s default for this source here: {doc['default_mode']} "
                f"({doc['default_mode_rule']})." if "default_mode" in doc else "")]
    return "\n".join(lines)


def scaling_section(doc: dict) -> str:
    threads = doc.get("threads") or [1]
    top = max(threads)
    body = []
    # Recomputed from the rows, which hold every round's median: the summary stored by earlier runs lacks the
    # per-round speed-ups.
    for e in summary(doc.get("rows", []), threads):
        body.append([e["backend"], e["policy"], e["frame"], "x".join(map(str, e["batch_shape"]))]
                    + [number(e["median_ms"].get(str(n))) for n in threads]
                    + [number(e.get("ms_per_megapixel_t1"), 1)] + ([speedup_cell(e, top)] if top > 1 else [])
                    + [number((e.get("pipeline_fps") or {}).get(str(n)), 1) for n in threads])
    speedup = ([f"t{top} vs t1 (rounds)"] if top > 1 else [])
    lines = ["### Scaling: frame size and threads (`benchmarks/scaling.py`)", "", provenance(doc), "",
             "Raw inference median ms; native = one inference of the whole frame (dynamic-H/W export), tile = "
             "256x256 tiles with >= 32 px overlap in one batch; e2e FPS = the full pipeline where it ran."
             + (f" t{top} vs t1 = the t1 median over the t{top} median, and in brackets the lowest and highest of "
                f"the same ratio taken round by round (both thread counts of a round ran in one pass over the "
                f"configurations): a wide bracket means the machine's speed moved between the rounds, and the "
                f"row's thread gain is uncertain." if top > 1 else ""), "",
             table(["backend", "policy", "frame", "batch"] + [f"t{n} ms" for n in threads] + ["ms/MP t1"] + speedup
                   + [f"e2e FPS t{n}" for n in threads], body)]
    return "\n".join(lines)


# The pipeline runs the targets are read from: the README table's (fp32 ncnn), the fastest artifact at 1 thread
# (ncnn int8), both int8 artifacts that have been the fastest at 2 threads (benchmarks/results/backends*.json:
# TFLite on 2026-12-04, 3.92 against 4.41 ms; ncnn on 2026-12-07, 3.82 against 4.08 ms), and the grey-input twins
# of the int8 ones (export --grey-input, bundled in edge_irst/assets/lw_irstnet_grey), the fastest in the smoke run
# of 2026-12-08.
PIPELINE_RESULTS = ("pipeline", "pipeline_ncnn_int8", "pipeline_tflite_int8_t2", "pipeline_ncnn_int8_t2",
                    "pipeline_ncnn_int8_grey", "pipeline_ncnn_int8_grey_t2", "pipeline_tflite_int8_grey_t2")


def _when(doc: dict, name: str) -> str:
    return f"`{name}.json`, {doc.get('created', '?')[:10]}"


def glance_rows(results: Path) -> list[list]:
    """One row per target of the benchmarks issue, from the committed results: target, required, measured,
    verdict, the result file and its date. A file not there yet gives a row that says so."""
    def load(name: str):
        path = results / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def verdict(met) -> str:
        return "not measurable" if met is None else "met" if met else "**not met**"

    rows = []
    backends = load("backends")
    if backends is None:
        rows.append(["backends targets", "-", "not measured yet", "-", "`backends.json`"])
    else:
        for t in backends.get("targets", []):
            measured = ("-" if t["met"] is None else
                        f"{t['speedup_wall']:.2f}x ({matchup(t)}{head_to_head_note(t)})")
            rows.append([f"t{t['threads']} {t['target']}", f">= {t['required']:g}x", measured, verdict(t["met"]),
                         _when(backends, "backends")])
        for h in backends.get("headline", []):
            rows.append([f"t{h['threads']} fastest backend vs PyTorch eager (headline; paper: 2.6x)", "-",
                         f"{h['speedup']:.2f}x ({h['fastest']})", "-", _when(backends, "backends")])
    postprocess = load("postprocess")
    if postprocess is None:
        rows.append(["postprocess targets", "-", "not measured yet", "-", "`postprocess.json`"])
    else:
        for t in postprocess.get("targets", []):
            rows.append([f"postprocess {t['maps']} {t['size']} vs {t['against']}", f">= {t['required']:g}x",
                         f"{t['worst']:.2f}x (worst: {t['worst_map']}{spread_note(t)}{thread_gain_note(t)})",
                         verdict(t["met"]),
                         _when(postprocess, "postprocess")])
    for name in PIPELINE_RESULTS:
        pipeline = load(name)
        if pipeline is None:
            rows.append([f"pipeline overhead ({name})", "<= 10 %", "not measured yet", "-", f"`{name}.json`"])
            continue
        artifact = Path(pipeline["artifact"]).name
        for mode, r in list(pipeline["results"].items())[1:]:  # the first is raw inference itself
            paired = r.get("overhead_percent_paired")
            default = " (`Detector.stream`'s default here)" if mode == pipeline.get("default_mode") else ""
            spread = ""
            if r.get("overhead_percent_paired_quartiles"):  # results from before they were kept have none
                low, high = r["overhead_percent_paired_quartiles"]
                spread = f"; rounds' quartiles {low:.1f} to {high:.1f} %" + (
                    ", within the spread of the rounds" if within_spread((low, high), 10.0, at_most=True) else "")
            rows.append([f"pipeline overhead, {artifact} t{pipeline['threads_in_effect']}, {mode}{default}", "<= 10 %",
                         "-" if paired is None else f"{paired:.1f} % (paired rounds{spread})",
                         "-" if paired is None else verdict(paired <= 10.0), _when(pipeline, name)])
    return rows


def glance_section(results: Path = RESULTS) -> str:
    return "\n".join(["### Targets at a glance", "",
                      "The benchmarks issue's targets against the latest committed result of each script (details, "
                      "machine and command in the sections below; reruns on other days and machines in "
                      "[`benchmarks/HISTORY.md`](benchmarks/HISTORY.md)).", "",
                      table(["target", "required", "measured", "verdict", "result"], glance_rows(results))])


def gil_contention_section(doc: dict) -> str:
    body = [[mode, number(r["ms_per_frame"]), number(r["ratio_vs_alone"]) + "x",
             number(r["busy_share"]) if r["busy_share"] is not None else "-"]
            for mode, r in doc["results"].items()]
    return "\n".join([
        "### Beside a busy Python thread (`benchmarks/gil_contention.py`)", "", provenance(doc), "",
        f"`{doc['backend']}` ({Path(doc['artifact']).name}, {doc['threads_in_effect']} thread in effect); timed: "
        f"{doc['timed']}; the busy thread runs a pure-Python loop, at the switch interval named.", "",
        table(["mode", "ms per frame", "x alone (paired rounds)", "busy thread's share of its solo rate"], body),
        "", "Every native call that releases the GIL (inference, OpenCV, numpy on a whole frame) waits, on return, "
            "for the busy thread to be made to drop it: up to the switch interval. `sys.setswitchinterval(0.0005)` "
            "in the application shortens the wait (the last row); a detector in a process of its own does not "
            "share the GIL at all."])


SECTIONS = (("backends", backends_section), ("postprocess", postprocess_section), ("pipeline", pipeline_section),
            ("scaling", scaling_section), ("gil_contention", gil_contention_section))


def render() -> str:
    parts = [glance_section()]
    for name, section in SECTIONS:
        path = RESULTS / f"{name}.json"
        if path.is_file():
            parts.append(section(json.loads(path.read_text())))
        else:
            parts.append(f"### {name}\n\nNot measured yet: run `python benchmarks/{name}.py`.")
    return "\n\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the README block is current")
    args = parser.parse_args(argv)
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"{README} lacks the {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{BEGIN}\n{render()}\n{END}{tail}"
    if args.check:
        if updated != text:
            print("README speed tables are stale: run python benchmarks/make_readme_tables.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    print(f"updated {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

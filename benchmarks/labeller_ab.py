"""Is a change to the C labeller faster? Its core at another git revision against the working tree, in one process.

A/B of labeller_core.c alone (no Python, no binding): the base revision's core is compiled with its public symbols
renamed (base_irst_label, ...) and linked with the working tree's into one driver (benchmarks/c/labeller_ab.c),
which times both on the maps of benchmarks/postprocess.py (same generators, same seed, the same variants of each
map kind taken in turn and copied into one buffer before each call, untimed), round by round, base then head
back to back. Reported per map: the medians of microseconds per call and the median of the per-round ratios
head / base, which stays meaningful on a shared machine whose speed changes from minute to minute (both sides of a
ratio ran milliseconds apart). The driver also says whether both builds returned the same records, bit for bit.
Build flags: those of setup.py (-std=c99 -O3 -ffp-contract=off -pthread).

    .venv/bin/python benchmarks/labeller_ab.py --base 27f5599          # table on stdout, JSON in benchmarks/results/
    .venv/bin/python benchmarks/labeller_ab.py --base HEAD --quick     # smoke run: the tree against its last commit
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_irst.benchmarking import machine_info, script_command

sys.path.insert(0, str(Path(__file__).resolve().parent))
from postprocess import benchmark_maps  # noqa: E402  (the maps of the postprocess benchmark)

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "edge_irst" / "postprocess"
DRIVER = REPO / "benchmarks" / "c" / "labeller_ab.c"
RESULTS = REPO / "benchmarks" / "results" / "labeller_ab.json"
FLAGS = ["-std=c99", "-O3", "-ffp-contract=off", "-pthread"]
RENAMED = ("irst_label", "irst_workspace_new", "irst_workspace_free", "irst_scan_name", "irst_last_run_count")
# The declarations both builds must share for the driver to read the base's results with the head's header.
SHARED_DECLARATIONS = ("#define IRST_TARGET_FIELDS", "typedef struct {\n    const float *data;",
                       "int irst_label(const irst_map *map, float threshold, int32_t *labels, const irst_filter")


def compiler() -> str:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    raise SystemExit("labeller_ab: no C compiler (cc, gcc, clang or $CC)")


def git_show(revision: str, path: str) -> str:
    shown = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=REPO, capture_output=True, text=True)
    if shown.returncode != 0:
        raise SystemExit(f"labeller_ab: cannot read {path} at {revision!r}: {shown.stderr.strip()}")
    return shown.stdout


def declaration(header: str, start: str) -> str:
    begin = header.find(start)
    return "" if begin < 0 else header[begin:header.find("\n\n", begin)]


def build(work: Path, revision: str) -> Path:
    base = work / "base"
    base.mkdir()
    head_header = (CORE / "labeller_core.h").read_text()
    base_header = git_show(revision, "edge_irst/postprocess/labeller_core.h")
    for start in SHARED_DECLARATIONS:
        if declaration(base_header, start) != declaration(head_header, start):
            raise SystemExit(f"labeller_ab: the labeller's interface changed since {revision} "
                             f"({start.splitlines()[0]}...): the two builds cannot be compared in one driver")
    (base / "labeller_core.h").write_text(base_header)
    (base / "labeller_core.c").write_text(git_show(revision, "edge_irst/postprocess/labeller_core.c"))
    cc, driver = compiler(), work / "labeller_ab"
    steps = ([cc, *FLAGS, "-c", "-I", str(base), *(f"-D{name}=base_{name}" for name in RENAMED),
              str(base / "labeller_core.c"), "-o", str(work / "base.o")],
             [cc, *FLAGS, "-I", str(CORE), str(DRIVER), str(CORE / "labeller_core.c"), str(work / "base.o"),
              "-o", str(driver), "-lm"])
    for step in steps:
        built = subprocess.run(step, capture_output=True, text=True)
        if built.returncode != 0:
            raise SystemExit(f"labeller_ab: build failed:\n{' '.join(step)}\n{built.stderr}")
    return driver


def written_maps(work: Path):
    """(name, width, height, file of its variants, back to back) for the map kinds of benchmarks/postprocess.py,
    in its order, one at a time: each file is deleted when the next kind is asked for (a kind takes up to
    postprocess.VARIANT_BYTES)."""
    for _, kind, (height, width), variants, _ in benchmark_maps():
        name = f"{width}x{height} {kind}"
        path = work / (name.replace(" ", "_").replace("%", "pc") + ".f32")
        np.stack(variants).astype(np.float32, copy=False).tofile(path)
        del variants
        yield name, width, height, path
        path.unlink()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision whose labeller_core.c is the baseline")
    parser.add_argument("--rounds", type=int, default=41, help="interleaved rounds per map (median reported)")
    parser.add_argument("--quick", action="store_true", help="5 rounds, for a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rounds = 5 if args.quick else args.rounds
    revision = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=REPO, capture_output=True,
                              text=True).stdout.strip() or args.base
    with tempfile.TemporaryDirectory(prefix="labeller_ab_") as temporary:
        work = Path(temporary)
        driver = build(work, args.base)
        print(f"C labeller core, base {revision} vs the working tree; one thread, medians of {rounds} interleaved "
              f"rounds (each sample >= 2 ms of calls), microseconds per call\n")
        print(f"{'map':<24} {'targets':>7} {'base us':>10} {'head us':>10} {'head/base':>9}  same records")
        rows = []
        for name, width, height, path in written_maps(work):  # the driver once per kind: one file at a time
            timed = subprocess.run([str(driver), str(rounds), "2000", name, str(width), str(height), str(path)],
                                   stdout=subprocess.PIPE, text=True)
            if timed.returncode != 0:
                raise SystemExit(f"labeller_ab: the driver failed on {name} (exit {timed.returncode})")
            row = json.loads(timed.stdout)
            rows.append(row)
            print(f"{row['map']:<24} {row['targets']:>7g} {row['base_us']:>10.1f} {row['head_us']:>10.1f} "
                  f"{row['head_over_base']:>9.3f}  {'yes' if row['same_records'] else 'NO'}", flush=True)
    different = [row["map"] for row in rows if not row["same_records"]]
    if different:
        print(f"\nthe two builds returned different records on: {', '.join(different)}")
    document = {"benchmark": "labeller_ab", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": script_command("benchmarks/labeller_ab.py", argv),
                "base": revision, "rounds": rounds, "flags": FLAGS,
                "machine": machine_info(),
                "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
                "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())

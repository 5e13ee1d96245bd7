"""`edge-irst bench` and edge_irst.benchmarking: what the output states, not how fast anything is.

Every run here uses a tiny method (1 warm-up, 3 runs, no time floor) on the bundled model: the tests check that
the numbers are consistent with each other and that the options read back from the runtimes are reported, never
a speed (speed is for benchmarks/).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_irst import benchmarking as bench
from edge_irst.assets import default_model

TINY = ["--warmup", "1", "--min-runs", "3", "--min-time", "0", "--no-progress"]


def run_cli(args: list[str], prelude: str = "") -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter; `prelude` runs first (e.g. to hide a runtime)."""
    code = f"{prelude}\nimport sys\nfrom edge_irst.cli import main\nsys.exit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def two_backends(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    done = run_cli(["bench", "--backend", "onnxruntime,ncnn", "--threads", "1", "--json", str(out),
                    "--compare", "onnxruntime", *TINY])
    assert done.returncode == 0, done.stderr
    return done, json.loads(out.read_text())


def test_rows_hold_consistent_latency_statistics(two_backends):
    _, doc = two_backends
    rows = {r["backend"]: r for r in doc["rows"]}
    assert set(rows) == {"onnxruntime", "ncnn"} and all(r["status"] == "ok" for r in rows.values())
    for row in rows.values():
        stats = row["inference"]
        assert stats["runs"] >= 3
        assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        assert stats["fps"] == pytest.approx(1000.0 / stats["median_ms"])
        assert stats["cpu_ms_per_frame"] > 0
        assert row["load_ms"] > 0 and row["first_inference_ms"] > 0 and row["peak_rss_mb"] > 0
        assert row["batch_shape"] == [1, 3, 256, 256]


def test_threads_and_precision_are_read_back_from_the_runtime(two_backends):
    _, doc = two_backends
    for row in doc["rows"]:
        assert row["threads_requested"] == 1 and row["threads_in_effect"] == 1
        assert row["threads_source"]  # says where the number came from (read back, or echoed)
        assert row["precision_in_effect"] in ("fp32", "fp16", "bf16", "int8")
        assert row["options_in_effect"]["backend"] == row["backend"]


def test_pipeline_stages_are_timed_separately(two_backends):
    _, doc = two_backends
    for row in doc["rows"]:
        stages = row["pipeline"]["median_ms"]
        assert {"decode", "preprocess", "inference", "postprocess"} <= set(stages)
        assert all(value >= 0 for value in stages.values())
        assert row["pipeline"]["frames"] >= 3 and row["pipeline"]["fps"] > 0


def test_method_and_machine_are_recorded(two_backends):
    done, doc = two_backends
    assert doc["method"]["warmup"] == 1 and doc["method"]["min_runs"] == 3
    machine = doc["machine"]
    assert machine["cores_logical"] >= 1 and machine["cpu"] and machine["python"]
    if sys.platform == "linux" and machine["architecture"] == "x86_64":
        assert machine["cpu_id"], "the CPU identity was not read from /proc/cpuinfo"
    assert "numpy" in machine["libraries"] and "onnxruntime" in machine["libraries"]
    assert "method:" in done.stdout and "machine:" in done.stdout


X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse2 avx2 avx512f
"""
# Two core kinds, as on a big.LITTLE phone (Cortex-A55 0xd05, Cortex-A76 0xd0b): each part named once.
ARM_CPUINFO = "".join(f"processor\t: {i}\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU part\t: {part}\n\n"
                      for i, part in enumerate(["0xd05"] * 4 + ["0xd0b"] * 4))


def test_cpu_identity_is_read_where_the_model_name_is_generic():
    model, flags, identity = bench.parse_cpuinfo(X86_CPUINFO)
    assert (model, identity) == ("AMD EPYC", "family 25 model 17 stepping 1") and "avx512f" in flags
    model, flags, identity = bench.parse_cpuinfo(ARM_CPUINFO)
    assert model is None and identity == "implementer 0x41 part 0xd05, part 0xd0b" and "asimd" in flags
    assert bench.parse_cpuinfo("") == (None, set(), None)
    line = bench.machine_line({"cpu": "AMD EPYC", "cpu_id": "family 25 model 17 stepping 1",
                               "architecture": "x86_64"})
    assert line.startswith("AMD EPYC (x86_64, family 25 model 17 stepping 1), ")


def test_compare_ratios_are_baseline_over_row(two_backends):
    done, doc = two_backends
    rows = {r["name"]: r for r in doc["rows"]}
    baseline = doc["compare"]["baseline"]
    assert rows[baseline]["backend"] == "onnxruntime"
    for name, ratios in doc["compare"]["ratios"].items():
        expected = rows[baseline]["inference"]["median_ms"] / rows[name]["inference"]["median_ms"]
        assert ratios["inference"] == pytest.approx(expected)
    assert doc["compare"]["ratios"][baseline]["inference"] == 1.0
    assert "x vs " in done.stdout


def test_load_renders_a_saved_result_without_running(two_backends, tmp_path):
    _, doc = two_backends
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(doc))
    done = run_cli(["bench", "--load", str(saved), "--compare", "ncnn"])
    assert done.returncode == 0, done.stderr
    ncnn_name = next(r["name"] for r in doc["rows"] if r["backend"] == "ncnn")
    assert f"x vs {ncnn_name}" in done.stdout


def test_without_torch_and_a_runtime_the_missing_ones_are_listed_as_skipped(tmp_path):
    """The small-device case: torch and ncnn absent (blocked in sys.modules), `--backend all` still runs."""
    out = tmp_path / "bench.json"
    prelude = ("import sys\nsys.modules['torch'] = None\nsys.modules['ncnn'] = None\n"
               "import atexit\natexit.register(lambda: print('TORCH_IMPORTED' if sys.modules.get('torch') "
               "else 'TORCH_ABSENT'))")
    done = run_cli(["bench", "--backend", "all", "--threads", "1", "--stages", "inference", "--json", str(out),
                    *TINY], prelude)
    assert done.returncode == 0, done.stderr
    assert "TORCH_ABSENT" in done.stdout
    doc = json.loads(out.read_text())
    skipped = {s["backend"]: s["reason"] for s in doc["skipped"]}
    assert "ncnn not installed" in skipped["ncnn"] and "edge-irst[ncnn]" in skipped["ncnn"]
    assert "torch not installed" in skipped["torch"]
    ran = {r["backend"] for r in doc["rows"] if r["status"] == "ok"}
    assert {"onnxruntime", "opencv"} <= ran and not ran & {"ncnn", "torch"}


def test_a_failing_configuration_is_reported_not_fatal(tmp_path):
    """A model that cannot load becomes a row with the error; the other rows still run. As the --compare baseline
    it is refused with the reason it failed: after a run with a warning (the run and its JSON are kept), with
    --load as the error."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    out = tmp_path / "bench.json"
    good = default_model() / "lw_irstnet_fp32.onnx"
    done = run_cli(["bench", "--model", f"good={good}", "--model", f"broken={broken}", "--backend", "onnxruntime",
                    "--threads", "1", "--stages", "inference", "--json", str(out), "--compare", "broken", *TINY])
    doc = json.loads(out.read_text())
    rows = {r["config"]["label"]: r for r in doc["rows"]}
    assert rows["good"]["status"] == "ok"
    assert rows["broken"]["status"] != "ok" and "broken.onnx" in json.dumps(rows["broken"])
    assert done.returncode != 0  # a failed row is not silently a success
    refusal = "the row broken/onnxruntime/t1 failed, so it has no times to compare against"
    assert f"warning: --compare 'broken': {refusal}" in done.stderr and "broken.onnx" in done.stderr
    assert "x vs " not in done.stdout and "compare" not in doc  # no column of "-" ratios
    loaded = run_cli(["bench", "--load", str(out), "--compare", "broken"])
    assert loaded.returncode == 1 and refusal in loaded.stderr and "Traceback" not in loaded.stderr


def test_a_bad_compare_name_is_refused_before_measuring(tmp_path):
    """The row names are known from the plan: an unknown or ambiguous baseline fails before any worker runs."""
    out = tmp_path / "bench.json"
    for name, message in (("nosuchrow", "unknown row 'nosuchrow'"), ("t1", "--compare 't1' matches 2 rows")):
        done = run_cli(["bench", "--backend", "onnxruntime,opencv", "--threads", "1", "--json", str(out),
                        "--compare", name, *TINY])
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert "configurations x" not in done.stderr and not out.exists()  # nothing was measured


def test_equal_sizes_written_two_ways_are_measured_once(tmp_path):
    out = tmp_path / "bench.json"
    done = run_cli(["bench", "--backend", "onnxruntime", "--threads", "1", "--imgsz", "256,256x256", "--stages",
                    "inference", "--json", str(out), *TINY])
    assert done.returncode == 0, done.stderr
    assert [r["name"] for r in json.loads(out.read_text())["rows"]] == ["lw_irstnet:fp32/onnxruntime/t1/256x256"]


def test_the_inference_peak_rss_excludes_the_pipeline_stage():
    """The row's peak RSS is read before the pipeline stage loads the model again, so it is the same with the
    pipeline stage as without (at 641x513 the tiled pipeline used to lift it from ~112 to ~153 MB); the pipeline
    stage reports its own peak, and whether it could be told apart from the earlier stages."""
    model = str(default_model())
    configs = [bench.Config(model, "onnxruntime", threads=1, imgsz=(513, 641), artifact_precision="fp32",
                            stages=stages, label=label)
               for label, stages in (("alone", ("inference",)), ("both", ("inference", "pipeline")))]
    alone, both = bench.run_configs(configs, bench.Method(warmup=1, min_runs=3, min_time_s=0), progress=False)
    assert alone["status"] == both["status"] == "ok", (alone.get("reason"), both.get("reason"))
    assert both["peak_rss_mb"] <= 1.1 * alone["peak_rss_mb"]
    pipeline = both["pipeline"]
    assert pipeline["peak_rss_mb"] > 0 and isinstance(pipeline["peak_rss_own"], bool)
    assert ("stage alone" in pipeline["peak_rss_scope"]) == pipeline["peak_rss_own"]
    if sys.platform == "linux":
        assert pipeline["peak_rss_own"], pipeline["peak_rss_scope"]


@pytest.mark.skipif(sys.platform != "linux", reason="the high-water mark is reset through /proc/self/clear_refs")
def test_the_peak_rss_reset_restarts_the_high_water_mark():
    block = np.ones(200 * 2**20 // 8)  # 200 MB, every page touched
    del block
    high = bench._peak_rss_mb()
    assert bench._reset_peak_rss() is None
    assert bench._peak_rss_mb() < high - 150


def test_pipeline_only_rows_show_threads_memory_and_how_frames_were_read(tmp_path):
    """--stages pipeline: the table has the threads cell, the stage's own peak RSS, load and first-inference
    times; each row records the Detector's real prefetch (0 = in line where the threads fill the usable CPUs)."""
    from edge_irst.pipeline import Detector, usable_cpus

    out = tmp_path / "bench.json"
    threads = sorted({1, usable_cpus()})
    done = run_cli(["bench", "--backend", "onnxruntime", "--threads", ",".join(map(str, threads)), "--stages",
                    "pipeline", "--json", str(out), *TINY])
    assert done.returncode == 0, done.stderr
    table = done.stdout[done.stdout.index("pipeline (Detector.stream"):]
    header = table.splitlines()[0]
    assert all(column in header for column in ("thr req>eff busy", "reader", "RSS MB", "load ms", "1st ms"))
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(threads)
    for row, count in zip(rows, threads):
        with Detector(default_model(), "onnxruntime", threads=count, warmup=0) as detector:
            prefetch = detector.prefetch
        pipeline = row["pipeline"]
        assert pipeline["prefetch"] == prefetch and pipeline["reader_thread"] == (prefetch > 0)
        assert ("in a reader thread" in pipeline["fps_includes"]) == (prefetch > 0)
        assert ("one after another" in pipeline["fps_includes"]) == (prefetch == 0)
        line = next(text for text in table.splitlines() if text.startswith(row["name"] + " "))
        assert f" {bench.threads_cell(row, 'pipeline')} " in line
        assert ("in line" if prefetch == 0 else "thread") in line
        assert f"{pipeline['peak_rss_mb']:.0f}" in line and f"{row['load_ms']:.1f}" in line
    assert "in line" in table  # the usable-CPUs row runs without a reader thread


def test_a_folder_without_a_readable_manifest_gets_the_loaders_reason_once(tmp_path):
    from edge_irst.backends import list_backends
    from edge_irst.errors import ModelFileError

    folder = tmp_path / "nomanifest"
    folder.mkdir()
    (folder / "lw_irstnet_fp32.onnx").write_bytes((default_model() / "lw_irstnet_fp32.onnx").read_bytes())
    with pytest.raises(ModelFileError, match="is a folder without manifest.json: pass an artifact file"):
        bench.plan([(None, str(folder))], list_backends(), [1], [None])
    done = run_cli(["bench", "--model", str(folder), *TINY])  # --backend all
    assert done.returncode == 1 and done.stderr.count("is a folder without manifest.json") == 1, done.stderr
    assert "nothing to measure" not in done.stderr
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="manifest.json is not valid JSON"):
        bench.plan([(None, str(folder))], list_backends(), [1], [None])


def test_a_manifest_listing_missing_files_is_skipped_with_the_resolvers_reason(tmp_path):
    """The bundled manifest copied with the onnx fp32 file only: the formats it lists but lacks say so."""
    import shutil

    from edge_irst.backends import list_backends

    folder = tmp_path / "partial"
    folder.mkdir()
    for name in ("manifest.json", "lw_irstnet_fp32.onnx", "lw_irstnet_fp32.onnx.json"):
        shutil.copy(default_model() / name, folder / name)
    configs, skipped = bench.plan([(None, str(folder))], list_backends(), [1], [None])
    assert {c.backend for c in configs} >= {"onnxruntime"}
    reasons = {s["backend"]: s["reason"] for s in skipped}
    for backend, listed in (("ncnn", "lw_irstnet_fp32.param"), ("mnn", "lw_irstnet_fp32.mnn")):
        if bench.installed_reason(backend) is None:
            assert reasons[backend] == f"{folder / 'manifest.json'} lists {listed}, which is missing from {folder}"


def test_summarize_percentiles_on_known_samples():
    stats = bench.summarize([float(v) for v in range(1, 101)])  # 1..100 ms
    assert stats["median_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(90.1) and stats["p99_ms"] == pytest.approx(99.01)
    assert stats["fps"] == pytest.approx(1000 / 50.5)
    assert math.isclose(stats["min_ms"], 1.0) and math.isclose(stats["max_ms"], 100.0)


@pytest.mark.parametrize("text, size", [("256", (256, 256)), ("640x512", (512, 640)), ("1920x1080", (1080, 1920))])
def test_sizes_are_width_by_height(text, size):
    assert bench.parse_size(text) == size


def test_a_cached_export_is_redone_only_for_what_it_cannot_serve():
    """Missing and FAILED artifacts are redone, and skipped ones where the exporter now writes them (FORMATS:
    ncnn int8 was once skipped for want of ncnn2int8); a precision no format writes stays skipped."""
    manifest = {"artifacts": [
        {"format": "onnx", "precision": "fp32", "status": "verified"},
        {"format": "onnx", "precision": "int8", "status": "UNVERIFIED"},
        {"format": "mnn", "precision": "fp16", "status": "FAILED"},
        {"format": "ncnn", "precision": "int8", "status": "skipped"},
        {"format": "ncnn", "precision": "int4", "status": "skipped"},
    ]}
    assert bench.artifacts_to_redo(manifest, {("onnx", "fp32"), ("onnx", "int8"), ("ncnn", "int4")}) == set()
    wanted = {("onnx", "fp32"), ("mnn", "fp16"), ("ncnn", "int8"), ("tflite", "fp32")}
    assert bench.artifacts_to_redo(manifest, wanted) == {("mnn", "fp16"), ("ncnn", "int8"), ("tflite", "fp32")}


def test_a_cached_export_from_other_exporter_code_is_not_reused(tmp_path, monkeypatch):
    """The cache key holds a fingerprint of the exporter's source: a folder that an older exporter wrote under the
    same weights and version is exported again; the folder it then writes is reused."""
    import hashlib

    import edge_irst.export

    digest = hashlib.sha256()  # over the exporter's files, by name and content
    for path in sorted(Path(edge_irst.export.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    fingerprint = bench.exporter_fingerprint()
    assert fingerprint == digest.hexdigest()[:12]

    weights = tmp_path / "Weights.pkl"
    weights.write_bytes(b"not really weights")
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    manifest = {"artifacts": [{"format": "onnx", "precision": "fp32", "status": "verified"}]}
    stale = tmp_path / "cache" / f"weights_{sha[:12]}_fixed_{bench.__version__}_{'0' * 12}"
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text(json.dumps(manifest))
    exported = []

    def fake_export(path, out, name, **_):
        exported.append(name)
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "manifest.json").write_text(json.dumps(manifest))

    monkeypatch.setattr(edge_irst.export, "export", fake_export)
    first, _ = bench.cached_export(weights, "onnx", "fp32", tmp_path / "cache", log=lambda _: None)
    assert first.name == f"weights_{sha[:12]}_fixed_{bench.__version__}_{fingerprint}" and exported == [first.name]
    again, _ = bench.cached_export(weights, "onnx", "fp32", tmp_path / "cache", log=lambda _: None)
    assert again == first and len(exported) == 1


def test_compare_pairs_the_rounds_of_two_rows():
    def row(name, rounds):
        return {"name": name, "inference": {"median_ms": float(np.median(rounds)), "median_ms_rounds": rounds,
                                            "cpu_ms_per_frame": 1.0}}

    # The machine slows down over the run; the fast row keeps at 2/3 of the slow one in every round.
    slow, fast = row("slow", [3.0, 6.0, 9.0, 12.0]), row("fast", [2.0, 4.0, 6.0, 8.0])
    pooled_fast = row("fast pooled", [2.0, 2.0, 2.0, 20.0])
    single = row("one round", [4.0])
    result = bench.compare([slow, fast, pooled_fast, single], "slow")["ratios"]
    assert result["fast"]["inference_paired"] == pytest.approx(1.5)
    assert result["fast"]["inference"] == pytest.approx(7.5 / 5.0)
    # Pooled medians say 3.75x; round by round the same samples are 1.5, 3, 4.5 and 0.6.
    assert result["fast pooled"]["inference"] == pytest.approx(3.75)
    assert result["fast pooled"]["inference_paired"] == pytest.approx(np.median([1.5, 3.0, 4.5, 0.6]))
    assert "inference_paired" not in result["one round"] and bench.round_ratios(slow, single) == []
    doc = {"method": {"description": "m"}, "machine": {}, "rows": [{**r, "status": "ok", "backend": "x",
                                                                       "batch_shape": [1, 3, 8, 8], "load_ms": 1.0,
                                                                       "first_inference_ms": 1.0,
                                                                       "peak_rss_mb": 1.0}
                                                                      for r in (slow, fast)]}
    for r in doc["rows"]:
        r["inference"].update(p90_ms=1.0, p99_ms=1.0, fps=1.0)
    text = bench.render(doc, bench.compare(doc["rows"], "slow"))
    assert "paired x" in text and "1.50x" in text


def test_within_spread_follows_which_side_of_the_required_value_passes():
    # ">= required" targets (speed-ups): a quartile exactly at the requirement still passes
    assert bench.within_spread([1.4, 1.6], 1.5) and bench.within_spread([1.4, 1.5], 1.5)
    assert not bench.within_spread([1.5, 1.6], 1.5) and not bench.within_spread([1.3, 1.4], 1.5)
    # "<= required" targets (overheads)
    assert bench.within_spread([8.0, 12.0], 10.0, at_most=True)
    assert bench.within_spread([10.0, 12.0], 10.0, at_most=True)
    assert not bench.within_spread([8.0, 10.0], 10.0, at_most=True)
    assert not bench.within_spread([11.0, 12.0], 10.0, at_most=True)


def test_interleaved_rounds_balance_first_place_and_predecessors():
    # Round r of every interleaved benchmark (edge-irst bench and the benchmarks/ scripts) runs interleaved(items, r).
    from collections import Counter

    for count in range(1, 12):
        items = [f"m{k}" for k in range(count)]
        cycle = 2 * count if count % 2 else count
        orders = [bench.interleaved(items, r) for r in range(cycle)]
        assert all(sorted(order) == sorted(items) for order in orders)
        firsts = Counter(order[0] for order in orders)
        followers = Counter(pair for order in orders for pair in zip(order, order[1:]))
        each = cycle // count  # 1 for an even count, 2 for an odd one
        assert set(firsts.values()) == {each} and len(firsts) == count
        # every ordered pair of distinct items is adjacent equally often: no item always follows the same other
        assert len(followers) == count * (count - 1) and set(followers.values()) <= {each}
        assert bench.interleaved(items, cycle + 3) == orders[3 % cycle]  # the design repeats
    assert bench.interleaved((1, 2), 1) == [2, 1] and bench.interleaved([], 3) == []
    assert [bench.interleaved("abcd", r) for r in range(2)] == [list("abdc"), list("bcad")]
    assert [bench.interleaved("abc", r) for r in (0, 3)] == [list("abc"), list("cba")]  # odd: then reversed


def test_load_refuses_a_file_that_is_not_a_bench_document(tmp_path):
    """Valid JSON of another shape (a list, a document without rows) is refused with the reason, no traceback."""
    for name, text, message in (("list.json", "[1, 2]", "schema None"),
                                ("norows.json", json.dumps({"schema": bench.SCHEMA}), "no list of rows")):
        (tmp_path / name).write_text(text)
        done = run_cli(["bench", "--load", str(tmp_path / name)])
        assert done.returncode == 1 and f"--load {tmp_path / name}: {message}" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize("flag, value", [("--imgsz", ","), ("--backend", ","), ("--artifact-precision", " , "),
                                         ("--threads", ",")])
def test_an_empty_list_is_refused_by_its_flag(flag, value):
    """An empty list used to plan nothing and report "no backend reads the given model", blaming the model."""
    done = run_cli(["bench", flag, value, *TINY])
    assert done.returncode == 1 and f"{flag} {value!r} names nothing" in done.stderr, done.stderr
    assert "nothing to measure" not in done.stderr


def test_a_json_path_that_cannot_be_written_is_refused_before_measuring(tmp_path):
    """A folder, or a path below a file, used to fail with a traceback once the whole run was done."""
    below_a_file = tmp_path / "file.txt"
    below_a_file.write_text("")
    for path, message in ((tmp_path, "is a folder"), (below_a_file / "bench.json", f"{below_a_file} is not a folder")):
        done = run_cli(["bench", "--backend", "onnxruntime", "--threads", "1", "--json", str(path), *TINY])
        assert done.returncode == 1 and f"--json {path}: {message}" in done.stderr, done.stderr
        assert "configurations x" not in done.stderr and "Traceback" not in done.stderr


def test_an_option_that_only_some_runtimes_apply_skips_the_others():
    """xnnpack= is TFLite's, spin= onnxruntime's, delegate= TFLite's: another backend would ignore it yet carry it
    in its row name, as if measured with it; it is skipped with the reason, like a precision it cannot apply."""
    from edge_irst.backends import list_backends

    model = [(None, str(default_model()))]
    for key, value, taker in (("xnnpack", False, "tflite"), ("spin", False, "onnxruntime"),
                              ("delegate", "x.so", "tflite")):
        configs, skipped = bench.plan(model, list_backends(), [1], [None], options={key: value})
        installed = [b for b in list_backends() if bench.installed_reason(b) is None]
        assert {c.backend for c in configs} == ({taker} & set(installed))
        reasons = {s["backend"]: s["reason"] for s in skipped}
        # torch too: the bundled folder keeps its source checkpoint, which the torch backend reads
        for other in ("onnxruntime", "opencv", "ncnn", "mnn", "tflite", "torch"):
            if other != taker and other in installed:
                assert reasons[other] == f"{other} takes no {key}= option (only {taker} applies it)"


@pytest.fixture(scope="module")
def precision_rows(tmp_path_factory):
    pytest.importorskip("ncnn", reason="the ncnn backend needs the [ncnn] extra")
    pytest.importorskip("ai_edge_litert", reason="the tflite backend needs the [tflite] extra")
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    done = run_cli(["bench", "--backend", "ncnn,tflite", "--threads", "1", "--precision", "auto,fp16", "--json",
                    str(out), *TINY])
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(out.read_text())


def test_a_skipped_pipeline_stage_says_why_below_the_table(precision_rows):
    """ncnn at precision fp16: the Detector takes no precision=, so that row's pipeline stage is skipped. The
    reason used to fill the policy cell (widening it for every row) and read "no precision= / option argument"."""
    text, doc = precision_rows
    name = "lw_irstnet:fp32/ncnn/t1/fp16"
    assert name in {r["name"] for r in doc["rows"]}
    table = text[text.index("pipeline (Detector.stream"):]
    header = table.splitlines()[0]
    assert header.index("reader") - header.index("policy") < 12  # the policy column holds a policy name
    assert next(line for line in table.splitlines() if line.startswith(name + " ")).split()[-1] == "skipped"
    assert f"pipeline stage skipped:\n  {name}: Detector takes no precision= argument; the pipeline stage " \
           f"runs at runtime defaults only" in table


def test_the_delegate_in_effect_is_in_the_table(precision_rows):
    """TFLite runs the graph through XNNPACK (read back from its execution plan); the table says so, '-' where
    the runtime's own kernels run it."""
    text, doc = precision_rows
    rows = {r["name"]: r for r in doc["rows"]}
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("inference (backend.run)"))
    end = header.index(" delegate ") + len(" delegate")  # the column's cells are right-aligned to here
    for name, row in rows.items():
        line = next(line for line in lines if line.startswith(name + " "))
        expected = "xnnpack" if row["options_in_effect"].get("xnnpack") else "-"
        assert line[:end].split()[-1] == expected, line
    assert bench.delegate_cell(rows["lw_irstnet:fp32/tflite/t1"]) == "xnnpack"
    assert bench.delegate_cell(rows["lw_irstnet:fp32/ncnn/t1"]) == "-"


def test_the_progress_bar_names_the_configuration_running(monkeypatch):
    """The bar is drawn as each configuration starts: it used to show nothing during the first one and, during
    each later one, the name of the one before (draws closer than 0.2 s apart were dropped)."""
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    model = str(default_model() / "lw_irstnet_fp32.onnx")
    configs = [bench.Config(model, "onnxruntime", threads=n) for n in (1, 2)]
    rows = bench.run_configs(configs, bench.Method(warmup=0, min_runs=1, min_time_s=0))
    assert all(r["status"] == "ok" for r in rows)
    draws = [d.replace("\x1b[K", "").strip() for d in terminal.getvalue().split("\r") if d.strip()]
    first, second = (c.name for c in configs)
    assert any(d.startswith("bench [") and "0/2 " in d and d.endswith(f"round 1/1 {first}") for d in draws), draws
    assert any("1/2 " in d and d.endswith(f"round 1/1 {second}") for d in draws), draws

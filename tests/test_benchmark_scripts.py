"""The benchmark scripts themselves: a smoke run of benchmarks/postprocess.py, checked for consistency (never for a
speed), and the README's tables checked against the committed results."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


@pytest.fixture(scope="module")
def postprocess_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("postprocess") / "postprocess.json"
    run = subprocess.run([sys.executable, str(BENCHMARKS / "postprocess.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout, json.loads(out.read_text())


def test_postprocess_benchmark_times_every_map_kind_on_several_variants(postprocess_run):
    _, doc = postprocess_run
    rows = doc["results"]
    assert len(rows) == 18
    assert {(r["size"], r["family"]) for r in rows} >= {("256x256", "sparse"), ("1920x1080", "dense")}
    for r in rows:
        # A map repeated call after call lets the branch predictor learn it: several variants per kind, always.
        assert r["variants"] >= 4, r
        assert all(value > 0 for value in r["wall_us"].values()), r
        assert r["map_read_fastest_us"] <= r["wall_us"]["map read"]
    sparse = [r for r in rows if r["family"] == "sparse"]
    assert {r["targets"] for r in sparse} == {3, 10, 50}
    assert doc["timer_overhead_ns"] > 0 and "variant" in doc["timing"]


def test_postprocess_verdicts_follow_from_the_rows(postprocess_run):
    stdout, doc = postprocess_run
    rows = {f"{r['size']} {r['map']}": r for r in doc["results"]}
    assert len(doc["targets"]) == 8
    for verdict in doc["targets"]:
        worst = rows[verdict["worst_map"]]
        assert verdict["worst"] == round(worst["speedup_wall"][verdict["against"]], 2)
        assert verdict["met"] == (worst["speedup_wall"][verdict["against"]] >= verdict["required"])
        assert verdict["needed_us"] == pytest.approx(worst["wall_us"][verdict["against"]] / verdict["required"],
                                                     abs=0.06)
        if "(1 thr)" in verdict["against"]:  # ours on one thread: bounded by one read of the map
            assert verdict["map_read_us"] == pytest.approx(worst["map_read_fastest_us"], abs=0.06)
            assert verdict["within_reach"] == (verdict["needed_us"] > verdict["map_read_us"])
        else:
            assert "map_read_us" not in verdict
    assert "targets (worst case over the maps concerned):" in stdout


def test_readme_tables_render_from_a_postprocess_run(postprocess_run, monkeypatch):
    _, doc = postprocess_run
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import make_readme_tables

    section = make_readme_tables.postprocess_section(doc)
    assert "map read us" in section and section.count("\n| ") == len(doc["results"]) + 2  # + header, rule
    for verdict in doc["targets"]:
        assert f"required {verdict['required']:g}x" in section


def test_readme_tables_match_the_committed_results():
    """The README's Speed block is rendered from benchmarks/results/*.json: rerun make_readme_tables.py after a
    benchmark, or this fails."""
    run = subprocess.run([sys.executable, str(BENCHMARKS / "make_readme_tables.py"), "--check"], capture_output=True,
                         text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr

"""threads="auto": candidates, the choice rule, and the real measurement on the bundled ncnn model (bundled with the
package, so no ../shared is needed)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edge_irst.backends import BackendOptions, load_backend, physical_cores, thread_choice
from edge_irst.errors import InputError

pytest.importorskip("ncnn", reason="the measured choice runs the bundled ncnn model")


def _bundled_fp32():
    from edge_irst.assets import default_model

    return default_model() / "lw_irstnet_fp32.param"


@pytest.mark.parametrize("cores, expected", [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (4, [1, 2, 4]),
                                             (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8])])
def test_candidates_are_one_the_powers_of_two_and_the_core_count(cores, expected):
    assert thread_choice.candidates(cores) == expected


def test_the_fewest_threads_within_the_tolerance_win():
    assert thread_choice.pick({1: 7.0, 2: 11.5}) == 1  # the second vCPU busy elsewhere
    assert thread_choice.pick({1: 7.0, 2: 5.0, 4: 4.9}) == 2  # 4 threads only 2 % faster than 2
    assert thread_choice.pick({1: 7.0, 2: 5.0, 4: 4.0}) == 4
    assert thread_choice.pick({1: 7.0, 2: 6.8}, tolerance=0.01) == 2


def test_auto_keeps_the_measured_fastest_and_closes_the_others():
    opened = []

    def open_backend(threads):
        backend = load_backend(_bundled_fp32(), "ncnn", threads=threads)
        opened.append(backend)
        return backend

    chosen = thread_choice.load_fastest(open_backend, [1, 2])
    try:
        choice = chosen.thread_choice
        medians = {int(n): ms for n, ms in choice["median_ms"].items()}
        assert set(medians) == {1, 2} and all(ms > 0 for ms in medians.values())
        assert choice["chosen"] == thread_choice.pick(medians)
        # The runtime reads back the count that won, and reports what was measured.
        effect = chosen.options_in_effect()
        assert effect["threads"] == choice["chosen"] and effect["threads_auto"] == choice
        assert choice["input"] == [1, 3, 256, 256]
        others = [b for b in opened if b is not chosen]
        assert len(others) == 1 and others[0].net is None  # closed
        assert chosen.run(np.zeros((1, 3, 256, 256), np.float32)).shape == (1, 1, 256, 256)
    finally:
        chosen.close()


def test_load_backend_and_the_detector_take_auto():
    from edge_irst.pipeline import Detector

    backend = load_backend(_bundled_fp32(), threads="auto")
    try:
        counts = [int(n) for n in backend.options_in_effect()["threads_auto"]["median_ms"]]
        assert counts == thread_choice.candidates(physical_cores())
    finally:
        backend.close()
    with Detector(_bundled_fp32(), threads="auto") as detector:
        assert detector.backend.thread_choice["chosen"] == detector.backend.options_in_effect()["threads"]


def test_auto_is_not_a_runtime_option_and_bad_counts_are_refused():
    with pytest.raises(InputError, match="taken by load_backend"):
        BackendOptions(threads="auto")
    run = subprocess.run([sys.executable, "-m", "edge_irst", "run", "--source", "synthetic", "--max-frames", "1",
                          "--threads", "fast"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "'fast': expected a thread count (0 = physical cores) or 'auto'" in run.stderr


def test_run_command_reports_what_auto_measured():
    run = subprocess.run([sys.executable, "-m", "edge_irst", "run", "--source", "synthetic", "--max-frames", "3",
                          "--threads", "auto", "--model", str(_bundled_fp32())], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "chosen by --threads auto: 1 thread " in run.stdout


def test_process_wide_thread_counts_are_claimed_by_each_candidate():
    """OpenCV keeps one thread count per process: the instance created last would set it for all, so each
    candidate claims its own before it is timed, and the chosen one keeps it."""
    import cv2

    from edge_irst.assets import default_model

    onnx = default_model() / "lw_irstnet_fp32.onnx"
    before = cv2.getNumThreads()
    try:
        one, two = (load_backend(onnx, "opencv", threads=n) for n in (1, 2))
        assert cv2.getNumThreads() == 2
        one.claim_threads()
        assert cv2.getNumThreads() == 1 and one.options_in_effect()["threads"] == 1
        one.close()
        two.close()
        with load_backend(onnx, "opencv", threads="auto") as chosen:
            assert chosen.options_in_effect()["threads"] == chosen.thread_choice["chosen"]
    finally:
        cv2.setNumThreads(before)  # the rest of the session keeps OpenCV's own default


def test_pytorch_thread_count_is_claimed_too():
    torch = pytest.importorskip("torch", reason="the torch backend needs the [export] extra")
    from edge_irst.assets import default_model

    before = torch.get_num_threads()
    try:
        one, two = (load_backend(default_model() / "lw_irstnet.pt", "torch", threads=n) for n in (1, 2))
        assert torch.get_num_threads() == 2
        one.claim_threads()
        assert one.options_in_effect()["threads"] == 1
        one.close()
        two.close()
    finally:
        torch.set_num_threads(before)

"""Shared fixtures. Data and reference artifacts are read from ../shared; tests that need them skip without it."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
AUTHORS = SHARED / "reference" / "lw_irstnet_authors"
SAMPLES = AUTHORS / "samples" / "images"


def require_shared(*parts: str) -> Path:
    """Path under ../shared, or skip the test with a message saying what is missing and why."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the shared research data beside the repository "
                    f"(../shared), which is not distributed with edge-irst")
    return path


def until(condition, seconds: float = 10.0) -> bool:
    """Waits up to `seconds` for `condition()` to hold (a thread's work seen from the test); returns it then."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.fixture(scope="session")
def authors_dir() -> Path:
    return require_shared("reference", "lw_irstnet_authors")


@pytest.fixture(scope="session")
def sample_paths(authors_dir) -> list[Path]:
    return sorted((authors_dir / "samples" / "images").glob("*.png"))


@pytest.fixture
def check_float_max_pools(tmp_path):
    """A check of an int8 QDQ ONNX of LW-IRSTNet: every MaxPool runs in float under onnxruntime.

    onnxruntime's uint8 MaxPool is its slow generic kernel (export/to_onnx.py, _QUANT), so the export keeps the
    pools float: the stem's pool reads the float image, the others a DequantizeLinear whose scale differs from
    the QuantizeLinear after them (onnxruntime folds the pair back into a uint8 pool where the two match). The
    profile of a run must show every pool reading float32 and the convolutions uint8."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import json

    import numpy as np

    def check(path: Path) -> None:
        graph = onnx.load(str(path)).graph
        producer = {output: node for node in graph.node for output in node.output}
        inputs = {value.name for value in graph.input}
        pools = [node for node in graph.node if node.op_type == "MaxPool"]
        assert pools and any(pool.input[0] in inputs for pool in pools), "no pool reads the float graph input"
        assert all(producer[pool.input[0]].op_type == "DequantizeLinear"
                   for pool in pools if pool.input[0] not in inputs)
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(tmp_path / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0]
        session.run(None, {feed.name: np.zeros([d if isinstance(d, int) else 1 for d in feed.shape], np.float32)})
        kernels = [event["args"] for event in json.loads(Path(session.end_profiling()).read_text())
                   if event.get("cat") == "Node" and event["name"].endswith("_kernel_time")]
        pool_inputs = [next(iter(k["input_type_shape"][0])) for k in kernels if k["op_name"] == "MaxPool"]
        assert pool_inputs == ["float"] * len(pools), f"MaxPool inputs in the profile: {pool_inputs}"
        convolutions = [k["input_type_shape"][0] for k in kernels if k["op_name"] == "QLinearConv"]
        assert convolutions and all("uint8" in c for c in convolutions)

    return check

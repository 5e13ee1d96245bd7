"""Shared fixtures. Data and reference artifacts are read from ../shared; tests that need them skip without it."""
from __future__ import annotations

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


@pytest.fixture(scope="session")
def authors_dir() -> Path:
    return require_shared("reference", "lw_irstnet_authors")


@pytest.fixture(scope="session")
def sample_paths(authors_dir) -> list[Path]:
    return sorted((authors_dir / "samples" / "images").glob("*.png"))


@pytest.fixture
def check_float_max_pools(tmp_path):
    """A check of an int8 QDQ ONNX: its pools run in float under onnxruntime.

    onnxruntime's uint8 MaxPool is its slow generic kernel (export/to_onnx.py, _QUANT), so the export keeps the
    pools float. onnxruntime folds DequantizeLinear -> MaxPool -> QuantizeLinear back into a uint8 pool where both
    carry the same scale and zero point (exact: max commutes with the mapping), so a pool of a graph input reads
    that input directly and every other pool reads a DequantizeLinear. The pools that read a graph input or are
    not foldable must read float32 in the profile of a run, and the convolutions uint8."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import json

    import numpy as np

    def check(path: Path) -> None:
        graph = onnx.load(str(path)).graph
        producer = {output: node for node in graph.node for output in node.output}
        constants = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in graph.initializer}
        inputs = {value.name for value in graph.input}
        pools = [node for node in graph.node if node.op_type == "MaxPool"]
        of_inputs = [pool for pool in pools if pool.input[0] in inputs]
        dequantized = [pool for pool in pools if pool not in of_inputs]
        assert pools and all(producer[pool.input[0]].op_type == "DequantizeLinear" for pool in dequantized)
        requantized_inputs = [pool.name for pool in dequantized
                              if producer.get(producer[pool.input[0]].input[0], pool).input[0] in inputs]
        assert not requantized_inputs, f"{requantized_inputs} read a graph input through QuantizeLinear"

        def folded(pool) -> bool:
            quantize = [node for node in graph.node if pool.output[0] in node.input]
            params = [constants.get(name) for name in producer[pool.input[0]].input[1:]]
            return len(quantize) == 1 and quantize[0].op_type == "QuantizeLinear" and \
                [constants.get(name) for name in quantize[0].input[1:]] == params

        float_pools = len(of_inputs) + sum(not folded(pool) for pool in dequantized)
        assert float_pools >= 1, "every MaxPool is quantised (or folded back to uint8)"
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(tmp_path / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0]
        session.run(None, {feed.name: np.zeros([d if isinstance(d, int) else 1 for d in feed.shape], np.float32)})
        kernels = [event["args"] for event in json.loads(Path(session.end_profiling()).read_text())
                   if event.get("cat") == "Node" and event["name"].endswith("_kernel_time")]
        pool_inputs = [next(iter(k["input_type_shape"][0])) for k in kernels if k["op_name"] == "MaxPool"]
        assert len(pool_inputs) == len(pools) and pool_inputs.count("float") == float_pools
        assert all("uint8" in k["input_type_shape"][0] for k in kernels if k["op_name"] == "QLinearConv")

    return check

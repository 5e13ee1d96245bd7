"""MNN's converter is called without its telemetry: no socket, no `pip`, no scratch file left in our directory.

MNN 3.6.1's `MNN.tools.mnnconvert` imports `MNN.tools.utils.log`, which runs `pip install -U aliyun-log-python-sdk`
and contacts a telemetry endpoint. The instrument here is a `sitecustomize` module put on PYTHONPATH: every Python
process of the run (the driver and the converter's child) installs an audit hook (sys.addaudithook) that records
socket, os.system and subprocess events and blocks the first two. A fake `pip` first on PATH writes a marker
file, catching a pip started from C code, which audit hooks do not see.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("MNN", reason="MNN conversion needs the [export] extra (MNN==3.6.1)")
onnx = pytest.importorskip("onnx", reason="building the test model needs the [export] extra (onnx)")

from edge_irst.contract import AUTHORS_CONTRACT  # noqa: E402
from edge_irst.errors import ModelFileError  # noqa: E402
from edge_irst.export.to_mnn import convert_mnn  # noqa: E402

SITECUSTOMIZE = textwrap.dedent('''
    import json, os, sys
    _LOG = os.environ.get("EDGE_IRST_AUDIT_LOG")
    _BLOCK = ("socket.", "os.system", "os.exec", "os.posix_spawn", "os.spawn")
    _RECORD = _BLOCK + ("subprocess.Popen",)

    def _hook(event, args):
        if _LOG and event.startswith(_RECORD):
            with open(_LOG, "a") as fh:
                fh.write(json.dumps({"pid": os.getpid(), "event": event, "args": repr(args)[:400]}) + "\\n")
            if event.startswith(_BLOCK):
                raise PermissionError(f"blocked by the test's audit hook: {event}")

    sys.addaudithook(_hook)
''')


@pytest.fixture
def instrumented(tmp_path):
    """Environment for a subprocess: the audit hook on PYTHONPATH, a fake pip first on PATH; and the log reader."""
    hook_dir, bin_dir = tmp_path / "hook", tmp_path / "bin"
    hook_dir.mkdir()
    bin_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp_path / "pip-was-run"
    for name in ("pip", "pip3"):
        fake = bin_dir / name
        fake.write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\nexit 0\n")
        fake.chmod(0o755)
    log = tmp_path / "audit.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook_dir), os.environ.get("PYTHONPATH", "")]),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "EDGE_IRST_AUDIT_LOG": str(log)}

    def events() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return env, events, marker


def _tiny_onnx(path):
    """A 3->1 channel 3x3 convolution, float32 [1, 3, 16, 16] -> [1, 1, 16, 16], opset 18."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((1, 3, 3, 3)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["input", "w"], ["output"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 16, 16])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_the_hook_catches_mnn_telemetry_when_mnn_tools_is_imported(instrumented, tmp_path):
    """Control: importing MNN's own converter wrapper triggers the pip call this module guards against."""
    env, events, marker = instrumented
    done = subprocess.run([sys.executable, "-c", "import MNN.tools.mnnconvert"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    seen = events()
    assert any(e["event"] == "os.system" and "pip install" in e["args"] for e in seen), (seen, done.stdout)
    assert not marker.exists()  # blocked before it ran


def test_mnn_conversion_opens_no_socket_and_starts_no_pip(instrumented, tmp_path):
    env, events, marker = instrumented
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "tiny.mnn"
    driver = ("import sys\nfrom pathlib import Path\nfrom edge_irst.contract import AUTHORS_CONTRACT\n"
              "from edge_irst.export.to_mnn import convert_mnn\n"
              "convert_mnn(Path(sys.argv[1]), AUTHORS_CONTRACT, Path(sys.argv[2]), 'fp32', [])\n"
              "print('MNN loaded:', 'MNN.tools' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", driver, str(model), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and out.stat().st_size > 0
    assert "MNN loaded: False" in done.stdout
    seen = events()
    assert [e for e in seen if e["event"] != "subprocess.Popen"] == []  # no socket, no os.system, no exec
    popens = [e for e in seen if e["event"] == "subprocess.Popen"]
    assert len(popens) == 1 and "import _tools" in popens[0]["args"]  # only our converter child, from the driver
    assert not marker.exists()
    assert not (tmp_path / ".__convert_external_data.bin").exists()


def test_mnn_conversion_leaves_no_scratch_file_and_names_a_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    converted, _ = convert_mnn(_tiny_onnx(tmp_path / "tiny.onnx"), AUTHORS_CONTRACT, tmp_path / "a.mnn", "fp16", [])
    assert converted.stat().st_size > 0
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(ModelFileError, match=r"MNN's converter failed on .*broken\.onnx.*not onnx model"):
        convert_mnn(broken, AUTHORS_CONTRACT, tmp_path / "b.mnn", "fp32", [])
    assert not (tmp_path / "b.mnn").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mnn", "broken.onnx", "tiny.onnx"]

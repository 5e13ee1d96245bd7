"""`edge-irst eval` running a model: the authors' ONNX on SIRST test reproduces the independently measured figure."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edge_irst.cli import main
from conftest import require_shared


def test_authors_onnx_on_sirst_test_matches_the_reference_protocol(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    sirst = require_shared("data", "sirst")
    onnx = require_shared("reference", "lw_irstnet_authors", "LW_IRST.onnx")
    out = tmp_path / "eval.json"
    preds = tmp_path / "preds"
    code = main(["eval", "--data", str(sirst), "--split", "idx_427/test.txt", "--model", str(onnx),
                 "--backend", "onnxruntime", "--threads", "1", "--json", str(out), "--save-preds", str(preds),
                 "--no-progress"])
    assert code == 0
    doc = json.loads(out.read_text())
    summary = doc["results"]["irstd"]["summary"]
    assert doc["images"] == 86 and doc["policy"] == "resize"
    assert abs(summary["iou"] - 0.686) <= 0.01
    assert summary["targets"] == 109  # 8-connected; 110 under 4-connectivity (see test_metrics_conformance)
    assert round(summary["pd"] * summary["targets"]) == 107
    assert [m["stem"] for m in doc["size_mismatches"]] == ["Misc_111"]
    # The saved maps are the model-grid logits, re-scorable without the model.
    assert np.load(preds / f"{doc['stems'][0]}.npy").shape == (256, 256)
    capsys.readouterr()
    assert main(["eval", "--data", str(sirst), "--split", "idx_427/test.txt", "--preds", str(preds), "--logits",
                 "--resize-labels", "--json", str(tmp_path / "again.json"), "--no-progress"]) == 0
    again = json.loads((tmp_path / "again.json").read_text())["results"]["irstd"]["summary"]
    assert again["iou"] == pytest.approx(summary["iou"])


def test_eval_refuses_model_and_preds_together(tmp_path):
    assert main(["eval", "--data", str(tmp_path), "--preds", str(tmp_path), "--model", "x.onnx"]) == 2

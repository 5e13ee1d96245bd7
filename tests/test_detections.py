"""Detections: validation at construction, indexing, immutability, concatenation, output formats, scaling."""
from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest

from edge_irst.detections import BLOCK_INT_COLUMNS, BLOCK_REAL_COLUMNS, COLUMNS, Detections
from edge_irst.errors import InputError
from edge_irst.postprocess import label_targets


def _map_with_targets() -> np.ndarray:
    logits = np.full((12, 20), -4.0, np.float32)
    logits[1, 2:5] = [1.0, 4.0, 2.0]  # 3 pixels, wide
    logits[5:9, 10] = 3.0  # 4 pixels, tall
    logits[10, 18] = np.inf  # 1 pixel
    return logits


@pytest.fixture
def detections() -> Detections:
    return label_targets(_map_with_targets(), frame_index=4, timestamp=0.25)


def _columns(n: int = 3) -> dict:
    columns = {name: np.arange(n, dtype=dtype) for name, dtype in COLUMNS.items()}
    columns["aspect_ratio"] = np.ones(n)
    return columns


def test_columns_and_blocks_describe_the_same_fields():
    assert set(BLOCK_INT_COLUMNS) | set(BLOCK_REAL_COLUMNS) == set(COLUMNS)
    assert {f.name for f in dataclasses.fields(Detections)} == {*COLUMNS, "frame_index", "timestamp", "frame_shape"}


def test_construction_coerces_compatible_columns_and_validates_once():
    columns = _columns()
    columns["size"] = [1, 2, 3]  # a list of ints: fine
    columns["label"] = np.array([1, 2, 3], np.int32)  # widened to int64
    d = Detections(**columns, frame_index=np.int64(2), frame_shape=[480, 640])
    assert d.size.dtype == np.int64 and d.label.dtype == np.int64 and d.size.tolist() == [1, 2, 3]
    assert d.frame_index == 2 and type(d.frame_index) is int and d.frame_shape == (480, 640)


@pytest.mark.parametrize("metadata, message", [
    ({"frame_index": True}, "frame_index = True; expected None or an int >= 0"),
    ({"frame_index": -1}, "frame_index = -1"), ({"frame_index": 2.0}, "frame_index = 2.0"),
    ({"frame_index": "3"}, "frame_index = '3'"),
    ({"timestamp": float("nan")}, "timestamp = nan; expected None or a finite number"),
    ({"timestamp": float("inf")}, "timestamp = inf"), ({"timestamp": True}, "timestamp = True"),
    ({"timestamp": "1.0"}, "timestamp = '1.0'"),
    ({"frame_shape": (256, 0)}, r"frame_shape = \(256, 0\)"), ({"frame_shape": (256, 256.0)}, "frame_shape"),
    ({"frame_shape": (True, 256)}, "frame_shape"), ({"frame_shape": (256,)}, "frame_shape"),
])
def test_frame_metadata_is_checked_on_the_labeller_path_too(metadata, message):
    # label_targets() takes the stream's metadata through type-check shortcuts: what they let through must be
    # what the full checks accept, and everything else must still be refused by them.
    logits = np.full((8, 8), -5.0, np.float32)
    with pytest.raises(InputError, match=message):
        label_targets(logits, **metadata)
    with pytest.raises(InputError, match=message):
        Detections(**_columns(), **metadata)


def test_frame_metadata_is_normalised_to_plain_python_values():
    logits = np.full((8, 8), -5.0, np.float32)
    d = label_targets(logits, frame_index=np.int64(7), timestamp=np.float32(0.5), frame_shape=[480, np.int64(640)])
    assert (d.frame_index, d.timestamp, d.frame_shape) == (7, 0.5, (480, 640))
    assert type(d.frame_index) is int and type(d.timestamp) is float and all(type(v) is int for v in d.frame_shape)
    fast = label_targets(logits, frame_index=3, timestamp=1.25, frame_shape=(480, 640, 3))
    assert (fast.frame_index, fast.timestamp, fast.frame_shape) == (3, 1.25, (480, 640, 3))


@pytest.mark.parametrize("column, value, message", [
    ("size", np.array([1.5, 2.0, 3.0]), "Detections.size: expected dtype int64.*received float64"),
    ("x", np.zeros((3, 2)), r"Detections.x: expected a 1-D array of shape \(n,\), received shape \(3, 2\)"),
    ("y", np.zeros(4), r"Detections.y: expected shape \(3,\) like Detections.x, received shape \(4,\)"),
    ("label", np.array(["a", "b", "c"]), "Detections.label: expected dtype int64"),
])
def test_construction_errors_give_expected_and_received(column, value, message):
    columns = _columns()
    columns[column] = value
    with pytest.raises(InputError, match=message):
        Detections(**columns)


@pytest.mark.parametrize("metadata, message", [
    ({"frame_index": -1}, "frame_index"), ({"frame_index": True}, "frame_index"), ({"frame_index": 1.0}, "frame_index"),
    ({"timestamp": float("nan")}, "timestamp"), ({"timestamp": "now"}, "timestamp"),
    ({"frame_shape": (480,)}, "frame_shape"), ({"frame_shape": (0, 640)}, "frame_shape"),
    ({"frame_shape": (480.5, 640)}, "frame_shape"),
])
def test_metadata_validation(metadata, message):
    with pytest.raises(InputError, match=message):
        Detections(**_columns(), **metadata)


def test_from_blocks_checks_the_layout():
    ints, reals = np.zeros((2, 3), np.int64), np.zeros((13, 3))
    assert len(Detections.from_blocks(ints, reals)) == 3
    with pytest.raises(InputError, match=r"ints must be int64 of shape \(2, n\)"):
        Detections.from_blocks(ints.astype(np.float64), reals)
    with pytest.raises(InputError, match=r"reals must be float64 of shape \(13, n\)"):
        Detections.from_blocks(ints, reals[:12])
    with pytest.raises(InputError, match="ints has 3 targets, reals 2"):
        Detections.from_blocks(ints, reals[:, :2])
    Detections.from_blocks(ints, reals)
    assert ints.flags.writeable, "from_blocks must not change the flags of the caller's arrays"


def test_frozen_and_read_only(detections):
    with pytest.raises(dataclasses.FrozenInstanceError):
        detections.x = np.zeros(3)
    for name in COLUMNS:
        with pytest.raises(ValueError, match="read-only"):
            getattr(detections, name)[0] = 0
    with pytest.raises(ValueError, match="read-only"):
        detections[detections.size > 1].x[0] = 0
    with pytest.raises(AttributeError, match="no attribute 'colour'"):
        detections.colour  # noqa: B018


def test_indexing(detections):
    assert len(detections) == 3 and detections.size.tolist() == [3, 4, 1]
    one = detections[1]
    assert isinstance(one, Detections) and len(one) == 1 and one.size.tolist() == [4]
    assert detections[-1].label.tolist() == [3]
    assert detections[np.int64(0)].label.tolist() == [1]
    assert detections[1:].label.tolist() == [2, 3]
    assert detections[detections.size > 2].label.tolist() == [1, 2]
    assert detections[np.argsort(-detections.peak_logit)].label.tolist() == [3, 1, 2]  # peaks 4, 3, inf
    assert detections[[2, 0]].label.tolist() == [3, 1]
    assert len(detections[[]]) == 0
    assert detections[0].frame_index == 4 and detections[1:].timestamp == 0.25
    assert [d.label.tolist() for d in detections] == [[1], [2], [3]]  # iteration, one row at a time


def test_indexing_errors(detections):
    with pytest.raises(IndexError, match="target index 3 is out of range for 3 targets"):
        detections[3]
    with pytest.raises(IndexError, match=r"boolean mask: expected shape \(3,\).*received shape \(2,\)"):
        detections[np.array([True, False])]
    with pytest.raises(InputError, match="expected an int, a slice, a boolean mask"):
        detections[np.array([0.5])]


def test_empty_and_concatenate(detections):
    empty = Detections.empty(frame_index=4, timestamp=0.25, frame_shape=(12, 20))
    assert len(empty) == 0 and empty.x.dtype == np.float64 and empty.size.dtype == np.int64
    joined = Detections.concatenate([detections[:1], empty, detections[1:]])
    assert joined.label.tolist() == [1, 2, 3] and joined.frame_index == 4
    for name in COLUMNS:
        assert np.array_equal(getattr(joined, name), getattr(detections, name))
    assert len(Detections.concatenate([])) == 0
    with pytest.raises(InputError, match="part 1 has frame metadata"):
        Detections.concatenate([detections, label_targets(_map_with_targets(), frame_index=5)])
    with pytest.raises(InputError, match="part 0 is a list"):
        Detections.concatenate([[1, 2]])


def test_rows_and_json(detections):
    rows = detections.to_rows()
    assert len(rows) == 3 and list(rows[0])[:2] == ["frame_index", "timestamp"]
    assert set(rows[0]) == {"frame_index", "timestamp", *COLUMNS}
    assert type(rows[0]["size"]) is int and type(rows[0]["x"]) is float and rows[0]["frame_index"] == 4
    assert rows[2]["peak_logit"] == float("inf")
    document = json.loads(detections.to_json())  # strict JSON: no Infinity
    assert document["frame_index"] == 4 and document["frame_shape"] == [12, 20]
    assert document["targets"][2]["peak_logit"] is None and document["targets"][0]["size"] == 3
    assert document["targets"][1]["x"] == rows[1]["x"]
    assert json.loads(Detections.empty().to_json())["targets"] == []


def test_repr_and_table(detections):
    assert repr(detections) == "Detections(3 targets, frame_index=4, timestamp=0.25, frame_shape=(12, 20))"
    table = str(detections)
    assert "label" in table and "box (x_min,y_min,x_max,y_max)" in table and "2,1,4,1" in table
    assert detections.table(max_rows=1).endswith("... 2 more")


def test_scaled_tiles_offset_only(detections):
    moved = detections.scaled(1, 1, ox=100, oy=50, frame_shape=(1080, 1920))
    assert np.array_equal(moved.x, detections.x + 100) and np.array_equal(moved.peak_y, detections.peak_y + 50)
    assert np.array_equal(moved.x_max, detections.x_max + 100) and np.array_equal(moved.y_min, detections.y_min + 50)
    assert np.array_equal(moved.size, detections.size) and moved.frame_shape == (1080, 1920)
    assert detections.frame_shape == (12, 20), "scaled() returns a new object"


def test_scaled_matches_labelling_an_upscaled_map():
    logits = _map_with_targets()
    logits[logits == np.inf] = 9.0
    small = label_targets(logits)
    big = label_targets(np.repeat(np.repeat(logits, 3, axis=0), 2, axis=1))  # every pixel becomes 3 rows x 2 cols
    mapped = small.scaled(2, 3, frame_shape=(36, 40))
    for name in ("x", "y", "x_min", "y_min", "x_max", "y_max"):
        assert np.array_equal(getattr(mapped, name), getattr(big, name)), name
    np.testing.assert_allclose(mapped.weighted_x, big.weighted_x, rtol=1e-12)
    np.testing.assert_allclose(mapped.weighted_y, big.weighted_y, rtol=1e-12)
    # Sizes and ratios stay in the labelled grid; the peak maps as the centre of its grid pixel.
    assert np.array_equal(mapped.size, small.size) and np.array_equal(mapped.aspect_ratio, small.aspect_ratio)
    assert np.array_equal(mapped.peak_x, big.peak_x + 0.5) and np.array_equal(mapped.peak_y, big.peak_y + 1.0)


@pytest.mark.parametrize("arguments", [(0, 1), (1, -2), (float("inf"), 1), (1, 1, float("nan"))])
def test_scaled_rejects_bad_geometry(detections, arguments):
    with pytest.raises(InputError, match="scaled"):
        detections.scaled(*arguments)


def test_replace_and_pickle_round_trip(detections):
    renumbered = dataclasses.replace(detections, frame_index=9)
    assert renumbered.frame_index == 9 and np.array_equal(renumbered.x, detections.x)
    detections.x  # a cached column view must not come back as a separate, writable copy
    restored = pickle.loads(pickle.dumps(detections))
    assert restored._metadata() == detections._metadata()
    for name in COLUMNS:
        column = getattr(restored, name)
        assert np.array_equal(column, getattr(detections, name)) and not column.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            column[:1] = 0
    assert restored[restored.size > 1].label.tolist() == [1, 2]

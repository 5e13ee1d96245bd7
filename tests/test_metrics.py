"""edge_irst.metrics on crafted cases: each STD-EvalKit defect fixed by default is shown on a case where the old
behaviour was wrong; input forms and layouts; the matching solver against brute force and scipy; COCO box mAP,
mNoCoAP; the dataset loop and `edge-irst eval` on a small dataset written to a temporary folder."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_irst.cli import main
from edge_irst.errors import InputError, UnknownNameError
from edge_irst.metrics import (BoxAP, IrstdMetrics, NoCoAP, PixelMetrics, TargetMetrics, evaluate,
                               prediction_folder)
from edge_irst.metrics.components import find_components
from edge_irst.metrics.matching import match, min_cost_assignment


def canvas(points=(), shape=(32, 32), value=True):
    """bool HxW mask with the given (row, col) pixels set (slices allowed)."""
    mask = np.zeros(shape, dtype=bool)
    for point in points:
        mask[point] = value
    return mask


def target_at(result, distance=3.0):
    return result.target.at(distance)


# ---- defects of STD-EvalKit, fixed by default --------------------------------------------------------------------
def test_hungarian_matching_finds_the_assignment_greedy_first_match_misses():
    # ground truth at (20,10) and (20,14); prediction A at (19,12) is within 3 px of both and comes first in raster
    # order, B at (20,8) only reaches the first target. First-match gives A to the first target and strands B.
    label = canvas([(20, 10), (20, 14)])
    pred = canvas([(19, 12), (20, 8)])
    greedy = IrstdMetrics(compat="stdeval", curves=False)
    greedy.update(label, pred)
    optimal = IrstdMetrics(curves=False)
    optimal.update(label, pred)
    assert target_at(greedy.get())["detected"] == 1 and target_at(greedy.get())["false_alarm_pixels"] == 1
    assert target_at(optimal.get())["detected"] == 2 and target_at(optimal.get())["false_alarm_pixels"] == 0
    assert optimal.get().conventions.matching == "hungarian"


def test_zero_over_zero_is_zero_and_an_empty_union_image_scores_zero_in_niou():
    perfect = canvas([np.s_[4:7, 4:7]])
    empty = canvas()
    m = PixelMetrics()
    m.update([perfect, empty], [perfect, empty], layout="HW")
    r = m.get()
    assert r.iou == 1.0 and r.niou == 0.5  # (1 + 0) / 2: the empty image counts 0, never garbage
    m.reset()
    m.update(empty, empty)
    r = m.get()
    assert (r.precision, r.recall, r.f1, r.iou, r.niou) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_no_detection_at_all_scores_ap_plus_zero_not_minus_zero():
    # nothing predicted at any confidence: every AP is 0, which a table and the JSON must not show as -0
    m = IrstdMetrics()
    m.update(canvas([(5, 5), np.s_[20:23, 20:23]]), np.zeros((32, 32), np.float32))
    r = m.get()
    assert r.target.ap.tolist() == [0.0] * 10 and not np.signbit(r.target.ap).any()
    assert "-0.0" not in r.table(per_distance=True) and "-0.0" not in json.dumps(r.to_dict())


def test_single_class_batches_work():
    # STD-EvalKit's confusion matrix crashes when labels and predictions hold one class only
    m = IrstdMetrics()
    m.update(np.zeros((2, 16, 16), bool), np.zeros((2, 16, 16), np.float32), layout="BHW")
    r = m.get()
    assert (r.pixel.tp, r.pixel.fp, r.pixel.fn, r.pixel.tn) == (0, 0, 0, 512)
    assert np.isfinite(r.pixel.roc_auc) and target_at(r)["pd"] == 0.0 and target_at(r)["fa"] == 0.0
    m.reset()
    m.update(np.ones((16, 16), bool), np.ones((16, 16), bool))
    assert m.get().pixel.iou == 1.0 and target_at(m.get())["pd"] == 1.0


def test_pd_fa_roc_without_the_prepended_perfect_point():
    # a detector that never finds the target, only a 32-pixel false alarm: STD-EvalKit's (Fa 0, Pd 1) start
    # point credits it with a quarter of the unit square; the fixed curve starts at (0, 0) and scores 0
    label = canvas([(1, 1)], shape=(8, 8))
    pred = canvas([np.s_[4:8, :]], shape=(8, 8))
    compat = TargetMetrics(compat="stdeval")
    compat.update(label, pred)
    fixed = TargetMetrics()
    fixed.update(label, pred)
    k = compat.get().index(3)
    assert compat.get().pd_fa_auc[k] == pytest.approx(0.25)
    assert fixed.get().pd_fa_auc[k] == 0.0
    fa, pd = fixed.get().pd_fa_curve(3)
    assert (fa[0], pd[0]) == (0.0, 0.0) and np.all(pd == 0)


def test_a_bxhxw_stack_of_three_is_never_read_as_one_colour_image():
    labels = np.zeros((3, 16, 16), bool)
    labels[0, 2, 2] = labels[1, 8, 8] = labels[2, 12, 3] = True
    with pytest.raises(InputError, match="layout"):
        IrstdMetrics().update(labels, labels)
    m = IrstdMetrics()
    m.update(labels, labels, layout="BHW")
    assert m.get().target.targets == 3 and m.get().pixel.images == 3
    m = IrstdMetrics()
    m.update(canvas([(3, 3)]), canvas([(3, 3)]))  # a plain HxW array is accepted (STD-EvalKit refused it)
    assert m.get().target.targets == 1


def test_reset_clears_every_accumulator_including_the_sweeps():
    a_label, a_pred = canvas([(5, 5), (20, 20)]), canvas([(5, 6), (28, 3)])
    b_label, b_pred = canvas([(10, 10)]), canvas([(10, 10), np.s_[0:2, 0:2]])
    fresh = IrstdMetrics()
    fresh.update(b_label, b_pred)
    reused = IrstdMetrics()
    reused.update(a_label, a_pred)
    reused.reset()
    reused.update(b_label, b_pred)
    assert json.dumps(reused.get().to_dict()) == json.dumps(fresh.get().to_dict())


# ---- target-level rules ------------------------------------------------------------------------------------------
def test_dnanet_compat_reproduces_the_area_dedup_defect_and_default_counts_every_pixel():
    # one matched 1-px target and one 1-px false alarm elsewhere: DNANet drops the false alarm (same area)
    label, pred = canvas([(5, 5)]), canvas([(5, 5), (20, 20)])
    defective = TargetMetrics(compat="dnanet", curves=False)
    defective.update(label, pred)
    fixed = TargetMetrics(curves=False)
    fixed.update(label, pred)
    assert defective.get().at(3)["false_alarm_pixels"] == 0
    assert fixed.get().at(3)["false_alarm_pixels"] == 1
    assert "DEFECTIVE" in defective.conventions.describe()["fa"]


def test_distance_threshold_is_strict():
    label, pred = canvas([(10, 10)]), canvas([(10, 13)])  # centroids exactly 3 px apart
    m = TargetMetrics(distances=(3, 4), curves=False)
    m.update(label, pred)
    assert list(m.get().detected) == [0, 1]


def test_overlap_gates():
    # L-shaped target (centroid 11.1, 11.1) and a one-pixel prediction at (13, 13): 2.7 px away, inside the
    # target's box, touching none of its pixels
    label = canvas([np.s_[10, 10:15], np.s_[10:15, 10]])
    pred = canvas([(13, 13)])
    detected = {}
    for gate in ("none", "box", "mask"):
        m = TargetMetrics(gate=gate, curves=False)
        m.update(label, pred)
        detected[gate] = m.get().at(3)["detected"]
    assert detected == {"none": 1, "box": 1, "mask": 0}


def test_target_figures_on_a_hand_computed_case():
    # two targets: a 2x2 block matched by a 2x3 block (IoU 4/6), a single pixel missed; one 3-px false alarm
    label = canvas([np.s_[4:6, 4:6], (25, 25)])
    pred = canvas([np.s_[4:6, 4:7], np.s_[15, 10:13]])
    m = TargetMetrics(curves=False)
    m.update(label, pred)
    row = m.get().at(3)
    assert (row["targets"], row["detected"], row["predicted"], row["false_alarm_pixels"]) == (2, 1, 2, 3)
    assert row["pd"] == 0.5 and row["fa"] == 3 / 1024 and row["precision"] == 0.5 and row["f1"] == 0.5
    assert row["niou"] == pytest.approx((4 / 6) / 2)


def test_confidence_sweep_equals_operating_points_at_each_threshold():
    rng = np.random.default_rng(3)
    label = canvas([np.s_[3:6, 3:6], np.s_[20:23, 8:10], (28, 28)])
    prob = cv2.GaussianBlur(label.astype(np.float32), (7, 7), 1.5) + 0.3 * rng.random((32, 32), np.float32)
    prob = np.clip(prob, 0, 1)
    sweep = TargetMetrics(confidence_thresholds=[0.1, 0.3, 0.5, 0.7])
    sweep.update(label, prob)
    r = sweep.get()
    for c, t in enumerate(r.confidence_thresholds):
        single = TargetMetrics(threshold=t, curves=False)
        single.update(label, prob)
        s = single.get()
        assert np.array_equal(r.sweep_detected[c], s.detected) and r.sweep_predicted[c] == s.predicted
        assert np.array_equal(r.sweep_false_alarm_pixels[c], s.false_alarm_pixels)


def test_components_are_numbered_in_raster_order_like_scikit_image():
    measure = pytest.importorskip("skimage.measure")
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((40, 57)) < 0.3
        comps = find_components(mask)
        assert np.array_equal(comps.labels, measure.label(mask, connectivity=2))
        props = measure.regionprops(comps.labels)
        assert np.array_equal(comps.centroids, np.array([p.centroid for p in props]))
        assert np.array_equal(comps.areas, [p.area for p in props])


def test_conventions_are_declared_and_compat_modes_refuse_conflicting_options():
    m = IrstdMetrics()
    m.update(canvas([(3, 3)]), canvas([(3, 4)]))
    d = m.get().to_dict()["conventions"]
    for key in ("threshold", "matching", "distance", "components", "fa", "pd"):
        assert key in d["description"]
    assert d["matching"] == "hungarian" and d["connectivity"] == 8
    assert "logit" in d["description"]["threshold"]
    with pytest.raises(InputError, match="greedy"):
        IrstdMetrics(compat="stdeval", matching="hungarian")
    with pytest.raises(UnknownNameError, match="stdeval"):
        IrstdMetrics(compat="stdevalkit")
    with pytest.raises(InputError, match="report_distance"):
        IrstdMetrics(distances=(1, 2), report_distance=3)


# ---- pixel level -------------------------------------------------------------------------------------------------
def test_pixel_figures_on_a_hand_computed_case():
    label = canvas([np.s_[0:4, 0:4]])  # 16 target pixels
    pred = canvas([np.s_[0:4, 2:6]])  # 16 predicted, 8 shared
    m = PixelMetrics(curves=False)
    m.update(label, pred)
    r = m.get()
    assert (r.tp, r.fp, r.fn, r.tn) == (8, 8, 8, 1024 - 24)
    assert (r.precision, r.recall, r.f1) == (0.5, 0.5, 0.5) and r.iou == 8 / 24 and r.niou == 8 / 24


def test_binned_roc_auc_equals_the_rank_statistic_when_bins_separate_the_scores():
    rng = np.random.default_rng(1)
    label = rng.random((64, 64)) < 0.1
    levels = (np.arange(100) + 0.5) / 100  # every score lies strictly between two of the 101 bins
    score = levels[np.clip((label * 30 + rng.integers(0, 70, (64, 64))), 0, 99)]
    m = PixelMetrics()
    m.update(label, score)
    pos, neg = score[label], score[~label]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert m.get().roc_auc == pytest.approx(greater / (pos.size * neg.size), abs=1e-12)
    r = m.get()
    assert r.roc_fpr[0] == 0 and r.roc_tpr[-1] == 1 and np.all(np.diff(r.roc_fpr) >= 0)
    assert 0 < r.ap <= 1 and 0 < r.pr_auc <= 1


# ---- input forms -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(2)
    labels = np.zeros((2, 16, 24), bool)
    labels[0, 3:5, 3:5] = labels[0, 10, 20] = labels[1, 8:11, 8:10] = True
    probs = np.clip(cv2.GaussianBlur(labels.astype(np.float32).transpose(1, 2, 0), (5, 5), 1).transpose(2, 0, 1)
                    + 0.2 * rng.random(labels.shape), 0, 1).astype(np.float32)
    return labels, probs


def _dump(labels, preds, curves=True, **kw):
    m = IrstdMetrics(distances=(3,), curves=curves)
    m.update(labels, preds, **kw)
    return json.dumps(m.get().to_dict())


def test_every_layout_gives_the_same_figures(batch):
    labels, probs = batch
    reference = _dump(list(labels), list(probs))
    assert _dump(labels, probs, layout="BHW") == reference
    assert _dump(labels[:, None], probs[:, None]) == reference  # BCHW, guessed
    assert _dump(labels[..., None], probs[..., None]) == reference  # BHWC, guessed
    assert _dump(np.repeat(labels[..., None], 3, -1), probs, layout=("BHWC", "BHW")) == reference
    assert _dump([lab[None] for lab in labels], [p[None] for p in probs], layout="CHW") == reference
    with pytest.raises(InputError, match="each element"):
        _dump(list(labels), list(probs), layout="BHW")


def test_torch_tensors_are_read_without_importing_torch_for_numpy_callers(batch):
    torch = pytest.importorskip("torch")
    labels, probs = batch
    assert _dump(torch.from_numpy(labels), torch.from_numpy(probs), layout="BHW") == _dump(labels, probs, layout="BHW")
    half = torch.from_numpy(probs).to(torch.bfloat16)  # numpy has no bfloat16: widened on the way
    assert _dump(labels, half, layout="BHW") == _dump(labels, half.float().numpy(), layout="BHW")
    code = ("import sys, numpy as np; from edge_irst.metrics import IrstdMetrics; m = IrstdMetrics(); "
            "m.update(np.zeros((16, 16), bool), np.zeros((16, 16), np.float32)); m.get(); "
            "sys.exit(int('torch' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_paths_npy_files_and_lists_of_paths(tmp_path, batch):
    labels, probs = batch
    label_paths, pred_paths = [], []
    for i, (lab, prob) in enumerate(zip(labels, probs)):
        label_paths.append(tmp_path / f"l{i}.png")
        cv2.imwrite(str(label_paths[-1]), cv2.cvtColor(lab.astype(np.uint8) * 255, cv2.COLOR_GRAY2BGR))
        pred_paths.append(tmp_path / f"p{i}.npy")
        np.save(pred_paths[-1], prob[None])  # (1, H, W), as saved from a batch of one
    assert _dump(label_paths, pred_paths) == _dump(labels, probs, layout="BHW")
    assert _dump(str(label_paths[0]), str(pred_paths[0])) == _dump(labels[0], probs[0])


def test_prediction_kinds_masks_eight_bit_and_logits():
    label = canvas([np.s_[2:5, 2:5], (20, 20)])
    pred = canvas([np.s_[2:5, 3:6], (21, 20), (30, 2)])
    reference = _dump(label, pred)
    for form in (pred.astype(np.uint8) * 255, pred.astype(np.int64), pred.astype(np.float32)):
        assert _dump(label, form) == reference
    # the operating point is the same on logits (their sweeps differ: no logit map is exactly 0/1)
    reference = _dump(label, pred, curves=False)
    assert _dump(label, np.where(pred, 7.5, -7.5).astype(np.float32), curves=False, logits=True) == reference
    # logit 1e-9 is target (logit > 0) although its float32 sigmoid rounds to 0.5, which is not > 0.5
    tiny = np.where(pred, 1e-9, -1.0).astype(np.float32)
    assert _dump(label, tiny, curves=False, logits=True) == reference


@pytest.mark.parametrize("pred, message", [
    (np.full((16, 16), 3.0, np.float32), "logits=True"),
    (np.full((16, 16), np.nan, np.float32), "NaN"),
    (np.dstack([np.zeros((16, 16), np.uint8), np.full((16, 16), 255, np.uint8), np.zeros((16, 16), np.uint8)]),
     "differing channels"),
    (np.zeros((16, 17), np.float32), "differs from prediction shape"),
])
def test_bad_predictions_are_refused_with_the_fix(pred, message):
    with pytest.raises(InputError, match=message):
        IrstdMetrics().update(np.zeros((16, 16), bool), pred)


def test_thread_pool_and_sequential_runs_agree(batch):
    labels, probs = batch
    many_labels, many_probs = np.concatenate([labels] * 4), np.concatenate([probs] * 4)
    results = []
    for workers in (1, 4):
        m = IrstdMetrics(workers=workers)
        m.update(many_labels, many_probs, layout="BHW")
        results.append(json.dumps(m.get().to_dict()))
    assert results[0] == results[1]


# ---- matching ----------------------------------------------------------------------------------------------------
def _brute_force(cost, allowed):
    n, m = allowed.shape
    best = (0, 0.0)
    for k in range(min(n, m), 0, -1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                if all(allowed[r, c] for r, c in zip(rows, cols)):
                    total = sum(cost[r, c] for r, c in zip(rows, cols))
                    if best[0] < k or total < best[1]:
                        best = (k, total)
        if best[0]:
            return best
    return best


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 2 ** 31 - 1))
def test_hungarian_match_has_the_most_pairs_then_the_least_cost(n, m, seed):
    rng = np.random.default_rng(seed)
    cost = rng.random((n, m)) * 5
    allowed = cost < rng.uniform(1, 5)
    rows, cols = match(cost, allowed, "hungarian")
    assert np.all(allowed[rows, cols]) and len(set(cols.tolist())) == cols.size
    count, total = _brute_force(cost, allowed)
    assert rows.size == count and cost[rows, cols].sum() == pytest.approx(total)
    g_rows, g_cols = match(cost, allowed, "greedy")
    assert g_rows.size <= rows.size


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 7), st.integers(0, 6), st.integers(0, 2 ** 31 - 1))
def test_assignment_solver_agrees_with_scipy(n, extra, seed):
    optimize = pytest.importorskip("scipy.optimize")
    cost = np.random.default_rng(seed).random((n, n + extra)) * 10
    cols = min_cost_assignment(cost)
    ref_rows, ref_cols = optimize.linear_sum_assignment(cost)
    assert len(set(cols.tolist())) == n
    assert cost[np.arange(n), cols].sum() == pytest.approx(cost[ref_rows, ref_cols].sum())


def test_greedy_takes_the_first_allowed_prediction_not_the_nearest():
    cost = np.array([[2.5, 0.1]])
    rows, cols = match(cost, np.array([[True, True]]), "greedy")
    assert cols.tolist() == [0]
    assert match(cost, np.array([[True, True]]), "hungarian")[1].tolist() == [1]


# ---- box mAP and mNoCoAP -----------------------------------------------------------------------------------------
def test_box_map_on_hand_computed_cases():
    m = BoxAP()
    m.update_boxes([[[0, 0, 10, 10]]], [[[0, 0, 8, 8]]], [[0.9]])  # IoU 0.64: passes .50, .55, .60
    r = m.get()
    assert (r.map, r.map_50, r.map_75, r.mar) == pytest.approx((0.3, 1.0, 0.0, 0.3))
    m.reset()
    m.update_boxes([[[0, 0, 10, 10]]], [[[20, 20, 25, 25], [0, 0, 10, 10]]], [[0.9, 0.8]])  # FP ranked first
    assert m.get().map_50 == pytest.approx(0.5)
    label = canvas([np.s_[2:6, 3:9], (20, 20)])
    m.reset()
    m.update(label, label)
    assert m.get().map == 1.0 and m.get().detections == 2


def test_mnocoap_rewards_detections_at_the_target_and_needs_the_images():
    image = np.full((32, 32), 20, np.uint8)
    image[14:17, 14:17] = 200
    label = image > 100
    m = NoCoAP()
    m.update(label, label, image)
    assert m.get().mnocoap == pytest.approx(1.0)
    m.reset()
    m.update(label, canvas([(3, 3)]), image)
    assert m.get().mnocoap == 0.0
    with pytest.raises(InputError, match="images"):
        m.update(label, label)


@pytest.mark.parametrize("metric_class", [BoxAP, NoCoAP])
def test_component_metrics_follow_the_connectivity_and_comparison_asked_and_declare_them(metric_class):
    label = np.zeros((16, 16), bool)
    label[3, 3] = label[4, 4] = True  # one target 8-connected, two 4-connected
    image = np.where(label, 200, 20).astype(np.uint8)
    prediction = np.where(label, 0.5, 0.0)  # exactly at the operating point: only >= (stdeval) keeps it
    found = {}
    for options in ({}, {"connectivity": 4}, {"compat": "stdeval"}):
        metric = metric_class(**options)
        metric.update(label, prediction, image) if metric_class is NoCoAP else metric.update(label, prediction)
        result = metric.get()
        found[tuple(options.values())] = (result.targets, result.detections, result.conventions["components"],
                                          result.conventions["threshold"])
    assert found == {(): (1, 0, "8-connected (labels and predictions alike)", "components of probability > 0.5"),
                     (4,): (2, 0, "4-connected (labels and predictions alike)", "components of probability > 0.5"),
                     ("stdeval",): (1, 1, "8-connected (labels and predictions alike)",
                                    "components of probability >= 0.5")}
    assert "components of probability >= 0.5, 8-connected" in result.table()
    assert json.loads(json.dumps(result.to_dict()))["conventions"]["compat"] == "stdeval"


# ---- the dataset loop and `edge-irst eval` -----------------------------------------------------------------------
@pytest.fixture()
def dataset_dir(tmp_path):
    """images/ + masks/ (one mask at twice the image size) + preds/ (.npy logits and 8-bit PNG maps)."""
    rng = np.random.default_rng(4)
    for folder in ("images", "masks", "preds"):
        (tmp_path / folder).mkdir()
    for i in range(6):
        stem = f"img{i}"
        image = rng.integers(0, 60, (40, 48), dtype=np.uint8)
        mask = np.zeros((40, 48), np.uint8)
        mask[5 + i:8 + i, 10:13] = 255
        mask[30, 5 + 5 * i] = 255
        image[mask > 0] = 220
        cv2.imwrite(str(tmp_path / "images" / f"{stem}.png"), image)
        stored = cv2.resize(mask, (96, 80), interpolation=cv2.INTER_NEAREST) if i == 5 else mask
        cv2.imwrite(str(tmp_path / "masks" / f"{stem}.png"), stored)
        logits = np.where(mask > 0, 4.0, -4.0).astype(np.float32)
        logits[2, 2] = 6.0  # a false alarm
        if i % 2:
            np.save(tmp_path / "preds" / f"{stem}.npy", logits)
        else:
            cv2.imwrite(str(tmp_path / "preds" / f"{stem}.png"), (255 / (1 + np.exp(-logits))).astype(np.uint8))
    return tmp_path


def test_evaluate_reports_figures_and_the_size_mismatch(dataset_dir):
    from edge_irst.datasets import IrstdDataset

    report = evaluate(IrstdDataset(dataset_dir), prediction_folder(dataset_dir / "preds", logits=True),
                      [IrstdMetrics(), BoxAP(), NoCoAP()], with_images=True, progress=False)
    irstd = report.results["irstd"]
    assert report.images == 6 and irstd.target.targets == 12
    assert target_at(irstd)["pd"] == 1.0 and target_at(irstd)["false_alarm_pixels"] == 6
    assert [m["stem"] for m in report.size_mismatches] == ["img5"]
    assert "img5" in report.table() and "mNoCoAP" in report.table()


def test_a_stem_repeated_in_the_split_is_evaluated_once_and_listed(dataset_dir):
    from edge_irst.datasets import IrstdDataset

    (dataset_dir / "test.txt").write_text("img0\nimg1\nimg0\nimg2\n")
    (dataset_dir / "once.txt").write_text("img0\nimg1\nimg2\n")
    predict = prediction_folder(dataset_dir / "preds", logits=True)
    report = evaluate(IrstdDataset(dataset_dir, "test.txt"), predict, progress=False)
    once = evaluate(IrstdDataset(dataset_dir, "once.txt"), predict, progress=False)
    assert report.stems == ["img0", "img1", "img2"] and report.repeated_stems == ["img0"]
    assert report.results["irstd"].target.targets == once.results["irstd"].target.targets == 6
    assert report.to_dict()["repeated_stems"] == ["img0"] and "each evaluated once: 1 (img0)" in report.table()
    assert once.repeated_stems == [] and "more than once" not in once.table()


def test_evaluate_refuses_size_differences_unless_labels_are_resized(dataset_dir):
    from edge_irst.datasets import IrstdDataset

    dataset = IrstdDataset(dataset_dir)

    def at_256(sample, image):
        return np.zeros((256, 256), np.float32), "probabilities"

    with pytest.raises(InputError, match="resize_labels"):
        evaluate(dataset, at_256, progress=False)
    report = evaluate(dataset, at_256, resize_labels=True, progress=False)
    pixel = report.results["irstd"].pixel
    assert len(report.labels_resized) == 6 and pixel.tp + pixel.fp == 0 and pixel.tn + pixel.fn == 6 * 256 * 256


def test_eval_cli_prints_the_table_and_writes_json(dataset_dir, capsys):
    out = dataset_dir / "out" / "metrics.json"
    rc = main(["eval", "--data", str(dataset_dir), "--preds", str(dataset_dir / "preds"), "--logits",
               "--json", str(out), "--no-progress"])
    stdout = capsys.readouterr().out
    assert rc == 0 and "IoU" in stdout and "Pd@3px" in stdout and "img5" in stdout
    doc = json.loads(out.read_text())
    assert doc["results"]["irstd"]["summary"]["pd"] == 1.0
    assert doc["results"]["irstd"]["conventions"]["matching"] == "hungarian"
    # the component metrics take the IRSTD metrics' connectivity and declare it
    assert main(["eval", "--data", str(dataset_dir), "--preds", str(dataset_dir / "preds"), "--logits",
                 "--connectivity", "4", "--box-map", "--json", str(out), "--no-progress"]) == 0
    box_map = json.loads(out.read_text())["results"]["box_map"]
    assert box_map["conventions"]["components"].startswith("4-connected")
    assert doc["size_mismatches"][0]["action"] == "resized"


def test_a_folder_of_8_bit_maps_is_read_one_way_for_every_map(tmp_path, capsys):
    # Two frames of 8-bit probability maps: one with a target (levels up to 250), one empty but for faint noise at
    # level 1 (p = 1/255). Read map by map, the second would be a 0/1 mask whose noise pixels are all targets.
    for folder in ("images", "masks", "preds"):
        (tmp_path / folder).mkdir()
    noise = np.zeros((16, 16), np.uint8)
    noise[::3, ::5] = 1
    target = np.zeros((16, 16), np.uint8)
    target[4:6, 4:6] = 250
    for stem, pred in (("hit", target), ("quiet", noise)):
        mask = (pred > 128).astype(np.uint8) * 255
        cv2.imwrite(str(tmp_path / "images" / f"{stem}.png"), mask)
        cv2.imwrite(str(tmp_path / "masks" / f"{stem}.png"), mask)
        cv2.imwrite(str(tmp_path / "preds" / f"{stem}.png"), pred)
    from edge_irst.datasets import IrstdDataset

    predict = prediction_folder(tmp_path / "preds")
    assert predict.reading == "probabilities"
    pixel = evaluate(IrstdDataset(tmp_path), predict, progress=False).results["irstd"].pixel
    assert (pixel.tp, pixel.fp) == (4, 0)
    # the same maps declared masks are refused (a level above 1), and a folder of 0/1 masks reads as masks
    with pytest.raises(InputError, match="declared a 0/1 mask, but it reaches 250"):
        evaluate(IrstdDataset(tmp_path), prediction_folder(tmp_path / "preds", maps="mask"), progress=False)
    cv2.imwrite(str(tmp_path / "preds" / "hit.png"), (target > 0).astype(np.uint8))
    assert prediction_folder(tmp_path / "preds").reading == "mask"
    assert main(["eval", "--data", str(tmp_path), "--preds", str(tmp_path / "preds"), "--pred-maps",
                 "probabilities", "--no-progress"]) == 0
    assert "read as probability levels (/255, 16-bit /65535) (--pred-maps)" in capsys.readouterr().out
    with pytest.raises(InputError, match="prediction maps 'masks'"):
        prediction_folder(tmp_path / "preds", maps="masks")


def test_eval_cli_usage_and_failures(dataset_dir, capsys):
    assert main(["eval"]) == 2  # no data at all
    assert main(["eval", "--data", str(dataset_dir), "--preds", str(dataset_dir), "--model", "m.onnx"]) == 2
    assert main(["eval", "--data", str(dataset_dir), "--preds", str(dataset_dir / "nope")]) == 1
    assert "prediction folder not found" in capsys.readouterr().err
    # without --logits the .npy logit maps are outside [0, 1]: refused, naming the flag
    assert main(["eval", "--data", str(dataset_dir), "--preds", str(dataset_dir / "preds"), "--no-progress"]) == 1
    assert "--logits" in capsys.readouterr().err


def test_eval_cli_reports_unwritable_outputs_without_a_traceback(dataset_dir, capsys):
    args = ["eval", "--data", str(dataset_dir), "--preds", str(dataset_dir / "preds"), "--logits", "--no-progress"]
    assert main(args + ["--json", str(dataset_dir / "images")]) == 1  # a folder, not a file
    assert "--json" in capsys.readouterr().err
    (dataset_dir / "plots.txt").write_text("a file, not a folder")
    assert main(args + ["--plots", str(dataset_dir / "plots.txt")]) == 1
    assert "--plots" in capsys.readouterr().err


def test_a_folder_of_float_maps_is_not_said_to_hold_integer_maps(dataset_dir, capsys):
    from edge_irst.datasets import IrstdDataset

    # the dataset's own labels as logits, every one a .npy: there is no integer map whose maximum could exceed 1
    npy = dataset_dir / "npy"
    npy.mkdir()
    for sample, _, label in IrstdDataset(dataset_dir):
        np.save(npy / f"{sample.stem}.npy", np.where(label, 4.0, -4.0).astype(np.float32))
    assert prediction_folder(npy).integer_maps is False
    assert prediction_folder(dataset_dir / "preds").integer_maps is True
    assert prediction_folder(npy, maps="mask").integer_maps is None
    assert main(["eval", "--data", str(dataset_dir), "--preds", str(npy), "--logits", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "exceeds 1" not in stdout and f"no integer maps in {npy}" in stdout


def test_eval_cli_plots(dataset_dir, monkeypatch, capsys):
    args = ["eval", "--data", str(dataset_dir), "--preds", str(dataset_dir / "preds"), "--logits", "--no-progress",
            "--plots", str(dataset_dir / "plots")]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert main(args) == 1 and "edge-irst[plots]" in capsys.readouterr().err
    monkeypatch.undo()
    pytest.importorskip("matplotlib")
    assert main(args) == 0
    assert sorted(p.name for p in (dataset_dir / "plots").iterdir()) == ["pd_fa.png", "pr.png", "roc.png"]


def test_a_folder_without_prediction_maps_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("no maps here")
    with pytest.raises(InputError, match="no prediction maps"):
        prediction_folder(tmp_path)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("thresholds", [np.linspace(0, 1, 101), np.linspace(0, 1, 10), np.linspace(0.05, 0.95, 19),
                                        np.array([0.1, 0.2, 0.5, 0.55])])
def test_fast_threshold_ranks_equal_searchsorted_at_every_edge(side, thresholds):
    from edge_irst.metrics.inputs import _rank

    edges64 = np.concatenate([thresholds, np.nextafter(thresholds, 2), np.nextafter(thresholds, -1)])
    t32 = thresholds.astype(np.float32)
    edges32 = np.concatenate([t32, np.nextafter(t32, np.float32(2)), np.nextafter(t32, np.float32(-1))])
    randoms = np.random.default_rng(5).random(20000)
    infinite = [np.array([np.inf, -np.inf, 0.5, np.finfo(t).max, -np.finfo(t).max], t) for t in (np.float64, np.float32)]
    for values in (np.clip(edges64, 0, 1), np.clip(edges32, 0, 1), randoms, randoms.astype(np.float32), *infinite):
        assert np.array_equal(_rank(thresholds, values, side), np.searchsorted(thresholds, values, side=side))


def test_infinite_logits_count_above_every_threshold():
    # logit-domain thresholds evenly spaced (sigmoid of -1, 0, 1), the case that takes _rank's arithmetic guess
    thresholds = 1 / (1 + np.exp(-np.linspace(-1, 1, 3)))
    label = np.zeros((8, 8), np.uint8)
    label[2:4, 2:4] = 1
    tpr = {}
    for peak in (np.inf, 50.0):
        logits = np.full((8, 8), -10.0, np.float32)
        logits[2:4, 2:4] = peak
        pixel = PixelMetrics(thresholds=thresholds)
        pixel.update(label, logits, logits=True)
        tpr[peak] = pixel.get().roc_tpr.tolist()
    assert tpr[np.inf] == tpr[50.0] and tpr[50.0][1:] == [1.0] * (len(tpr[50.0]) - 1)

"""How fast does edge_irst.metrics evaluate a dataset, next to a straightforward scikit-image regionprops
implementation of the same metrics (the approach STD-EvalKit takes)?

Data (read from ../shared, decoded once; the timings cover the metrics on arrays in memory):
- "stdeval-100": the 100 STD-EvalKit label / prediction pairs (256x256, binary predictions);
- "nudt-664": NUDT-SIRST splits_50_50/test.txt labels (664 x 256x256) against perturbed copies made here:
  each target shifted by up to 2 px, blurred into a float probability map (sigma 1), 1 in 10 targets dropped,
  3 random false-alarm blobs and uniform noise (0 .. 0.08) added (seeded, so every run sees the same maps).
  Probabilities, not binary masks: every confidence threshold yields a different mask, the expensive case.

Figures: IoU, nIoU, pixel P/R/F1, pixel ROC/PR/AP; Pd, Fa, target P/R/F1, target-matched nIoU over distances
1..10; target AP and Pd-Fa ROC over the confidence sweep. The reference implementation computes them as
STD-EvalKit does (greedy first-match, >= on the sweep, 10 thresholds), and its figures are checked against
IrstdMetrics(compat="stdeval") before any time is reported.

Both sides are timed alike: one untimed warm-up call first (it pays the imports and every first call's set-up:
scikit-image loads measure's modules on first use, 0.27-0.56 s), then the best of --repeat timed calls.

    .venv/bin/python benchmarks/metrics.py [--repeat 3] [--out benchmarks/results/metrics.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge_irst.benchmarking import machine_info, script_command

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# The warm-up call's share of a data set: what it is for (imports, thread pool, first-call set-up) does not grow
# with the data, and a whole pass would add up to 17 s of reference time that nothing reads.
WARM_UP_IMAGES = 4


# ---- data --------------------------------------------------------------------------------------------------------
def load_stdeval():
    root = SHARED / "reference" / "stdeval_testdata"
    labels = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0 for p in sorted((root / "labels").glob("*.png"))]
    preds = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((root / "preds").glob("*.png"))]
    return np.stack(labels), np.stack(preds)


def load_nudt(seed: int = 0):
    from edge_irst.datasets import IrstdDataset

    dataset = IrstdDataset(SHARED / "data" / "nudt_sirst", "splits_50_50/test.txt")
    rng = np.random.default_rng(seed)
    labels, preds = [], []
    for i in range(len(dataset)):
        _, mask = dataset.load(i)
        labels.append(mask)
        preds.append(_perturb(mask, rng))
    return np.stack(labels), np.stack(preds)


def _perturb(mask: np.ndarray, rng) -> np.ndarray:
    h, w = mask.shape
    count, comp = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    moved = np.zeros((h, w), np.float32)
    for k in range(1, count):
        if rng.random() < 0.1:
            continue  # a missed target
        dy, dx = rng.integers(-2, 3, size=2)
        moved += np.roll(comp == k, (dy, dx), axis=(0, 1))
    for _ in range(3):  # false alarms
        y, x = rng.integers(4, h - 4), rng.integers(4, w - 4)
        moved[y - 1:y + 2, x - 1:x + 2] += rng.uniform(0.3, 1.0)
    prob = cv2.GaussianBlur(moved, (7, 7), 1.0) * 1.6 + rng.uniform(0, 0.08, (h, w)).astype(np.float32)
    return np.clip(prob, 0, 1).astype(np.float32)


# ---- the straightforward reference (scikit-image regionprops, STD-EvalKit's approach) ----------------------------
def regionprops_reference(labels, preds, distances=range(1, 11), sweep=np.linspace(0, 1, 10)):
    """Same figures as IrstdMetrics(compat="stdeval"), computed image by image with skimage.measure."""
    from skimage import measure

    distances = list(distances)
    n_d, n_c = len(distances), len(sweep)
    tp = fp = fn = 0
    image_iou = []
    roc_tp, roc_fp = np.zeros(n_c), np.zeros(n_c)
    targets = pixels = 0
    td, fd, predicted, iou_sum = np.zeros(n_d), np.zeros(n_d), 0, np.zeros(n_d)
    s_td, s_fd, s_pred = np.zeros((n_c, n_d)), np.zeros((n_c, n_d)), np.zeros(n_c)
    for label, pred in zip(labels, preds):
        prob = pred / 255.0 if pred.dtype == np.uint8 else pred.astype(np.float64)
        decision = prob > 0.5
        i_tp = int(np.sum(decision & label))
        tp, fp, fn = tp + i_tp, fp + int(np.sum(decision & ~label)), fn + int(np.sum(~decision & label))
        union = int(np.sum(decision | label))
        image_iou.append(i_tp / union if union else 0.0)
        for c, t in enumerate(sweep):
            roc_tp[c] += np.sum((prob >= t) & label)
            roc_fp[c] += np.sum((prob >= t) & ~label)
        gt_img = measure.label(label, connectivity=2)
        gt_props = measure.regionprops(gt_img)
        targets += len(gt_props)
        pixels += label.size
        for c, t in enumerate([0.5, *sweep]):
            pred_img = measure.label(prob >= t, connectivity=2)
            props = measure.regionprops(pred_img)
            for k, d in enumerate(distances):
                taken, matched, matched_px, ious = set(), 0, 0, 0.0
                for g in gt_props:
                    gc = np.array(g.centroid, np.float32)
                    for j, p in enumerate(props):
                        if j in taken:
                            continue
                        if np.linalg.norm(gc - np.array(p.centroid, np.float32)) < d:
                            taken.add(j)
                            matched += 1
                            matched_px += p.area
                            if c == 0:
                                inter = np.sum((gt_img == g.label) & (pred_img == p.label))
                                ious += inter / (g.area + p.area - inter)
                            break
                false_px = int(np.sum(pred_img > 0)) - matched_px
                if c == 0:
                    td[k] += matched
                    fd[k] += false_px
                    iou_sum[k] += ious
                else:
                    s_td[c - 1, k] += matched
                    s_fd[c - 1, k] += false_px
            if c == 0:
                predicted += len(props)
            else:
                s_pred[c - 1] += len(props)
    positives, negatives = tp + fn, len(labels) * labels[0].size - tp - fn
    tpr, fpr = roc_tp / positives, roc_fp / negatives
    precision_curve = np.divide(roc_tp, roc_tp + roc_fp, out=np.zeros(n_c), where=roc_tp + roc_fp > 0)
    s_pd = s_td / targets
    s_fa = s_fd / pixels
    s_prec = np.divide(s_td, s_pred[:, None], out=np.zeros_like(s_td), where=s_pred[:, None] > 0)
    ap_t, auc_t = [], []
    for k in range(n_d):
        p = np.append(s_prec[:, k], 1.0)
        r = np.append(s_pd[:, k], 0.0)
        ap_t.append(-np.sum((r[1:] - r[:-1]) * p[:-1]))
        order = np.argsort(s_fa[:, k], kind="stable")
        fa_k, pd_k = np.r_[0.0, s_fa[order, k]], np.r_[1.0, s_pd[order, k]]
        auc_t.append(np.trapezoid(pd_k, fa_k))
    r = np.append(tpr, 0.0)
    p = np.append(precision_curve, 1.0)
    return {
        "iou": tp / (tp + fp + fn), "niou": float(np.mean(image_iou)), "pixel_precision": tp / (tp + fp),
        "pixel_recall": tp / (tp + fn), "pixel_auc": float(np.trapezoid(tpr[::-1], fpr[::-1])),
        "pixel_ap": float(-np.sum((r[1:] - r[:-1]) * p[:-1])), "pd": td / targets, "fa": fd / pixels,
        "target_precision": td / predicted, "target_niou": iou_sum / targets, "target_ap": np.array(ap_t),
        "pd_fa_auc": np.array(auc_t),
    }


def ours_as_reference_dict(result) -> dict:
    p, t = result.pixel, result.target
    return {"iou": p.iou, "niou": p.niou, "pixel_precision": p.precision, "pixel_recall": p.recall,
            "pixel_auc": p.roc_auc, "pixel_ap": p.ap, "pd": t.pd, "fa": t.fa, "target_precision": t.precision,
            "target_niou": t.niou, "target_ap": t.ap, "pd_fa_auc": t.pd_fa_auc}


def max_difference(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(np.asarray(a[k], float) - np.asarray(b[k], float)))) for k in a)


# ---- timing ------------------------------------------------------------------------------------------------------
def best_time(evaluate, labels, preds, repeat: int):
    """(the best wall-clock seconds of `repeat` timed calls evaluate(labels, preds), the last call's result), after
    one untimed warm-up call on the first WARM_UP_IMAGES images: ours and the reference are timed alike."""
    evaluate(labels[:WARM_UP_IMAGES], preds[:WARM_UP_IMAGES])
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = evaluate(labels, preds)
        best = min(best, time.perf_counter() - start)
    return best, result


def time_ours(labels, preds, repeat: int, **options):
    from edge_irst.metrics import IrstdMetrics

    def evaluate(labels, preds):
        metrics = IrstdMetrics(**options)
        metrics.update(labels, preds, layout="BHW")
        return metrics.get()

    return best_time(evaluate, labels, preds, repeat)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed runs of ours and of the reference per case; the best is reported")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "metrics.json"))
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: this benchmark reads the shared research data", file=sys.stderr)
        return 1
    import skimage

    info = {**machine_info(), "opencv": cv2.__version__, "scikit-image": skimage.__version__}
    rows = []
    for name, loader, prediction_kind in (("stdeval-100", load_stdeval, "binary 0/255 PNG maps (real)"),
                                          ("nudt-664", load_nudt, "perturbed labels, float probabilities")):
        labels, preds = loader()
        print(f"{name}: {len(labels)} images {labels.shape[1]}x{labels.shape[2]}, predictions: {prediction_kind}",
              file=sys.stderr)
        t_reference, reference = best_time(regionprops_reference, labels, preds, args.repeat)
        t_compat, compat = time_ours(labels, preds, args.repeat, compat="stdeval")
        diff = max_difference(ours_as_reference_dict(compat), reference)
        if diff > 1e-9:
            print(f"{name}: figures differ from the regionprops reference by {diff:g}", file=sys.stderr)
            return 1
        t_default, default = time_ours(labels, preds, args.repeat)
        t_serial, _ = time_ours(labels, preds, args.repeat, workers=1)
        t_validation, validation = time_ours(labels, preds, args.repeat, distances=(3,), curves=False)
        rows.append({
            "dataset": name, "images": len(labels), "predictions": prediction_kind,
            "regionprops_reference_s": t_reference, "stdeval_compat_s": t_compat, "default_s": t_default,
            "default_one_thread_s": t_serial, "validation_fast_path_s": t_validation,
            "speedup_compat_vs_reference": t_reference / t_compat,
            "max_figure_difference_vs_reference": diff,
            "figures_default": default.summary(), "figures_stdeval": compat.summary(),
            "figures_validation": validation.summary(),
        })
    header = ("dataset", "images", "regionprops ref", "ours stdeval", "ratio", "ours default", "1 thread",
              "val. fast path")
    table = [header] + [(r["dataset"], str(r["images"]), f"{r['regionprops_reference_s']:.2f} s",
                         f"{r['stdeval_compat_s']:.2f} s", f"{r['speedup_compat_vs_reference']:.1f}x",
                         f"{r['default_s']:.2f} s", f"{r['default_one_thread_s']:.2f} s",
                         f"{r['validation_fast_path_s']:.3f} s") for r in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
    print("same figures as the reference (max abs difference): "
          + ", ".join(f"{r['dataset']} {r['max_figure_difference_vs_reference']:.1e}" for r in rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "metrics", "command": script_command("benchmarks/metrics.py", argv),
           "machine": info, "repeat": args.repeat, "warm_up_images": WARM_UP_IMAGES,
           "what": "seconds to accumulate + get() every figure from arrays in memory (PNG decoding excluded); "
                   "ours and the reference alike: one untimed warm-up call (imports, first-call set-up), then "
                   "the best of --repeat timed runs",
           "results": rows}
    from edge_irst.metrics.base import jsonable

    out.write_text(json.dumps(jsonable(doc), indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

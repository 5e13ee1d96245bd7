"""`edge-irst eval`: evaluate saved prediction maps against an IRSTD dataset's labels (no model needed).

    edge-irst eval --data ../shared/data/sirst --split idx_427/test.txt --preds runs/preds [--logits]
    edge-irst eval --images DIR --masks DIR --preds DIR --json metrics.json --plots plots/

Prints the standard table (IoU, nIoU, Pd, Fa at 3 px, F1, AUC) with the conventions it follows on stdout; logs and
the progress bar go to stderr. The evaluation loop is edge_irst.metrics.evaluate(dataset, predict_fn): a source
of predictions other than a folder only has to supply predict_fn.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from edge_irst.cli import THREADS_HELP, runtime_threads
from edge_irst.errors import InputError
from edge_irst.metrics.conventions import COMPAT_MODES, MATCHING_RULES, OVERLAP_GATES, REPORT_DISTANCE
from edge_irst.metrics.evaluate import MAP_READINGS

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data (a dataset root, or a plain pair of folders)")
    data.add_argument("--data", metavar="DIR", help="dataset root holding images/ and masks/")
    data.add_argument("--split", metavar="FILE", help="split list of stems (a path, or relative to --data)")
    data.add_argument("--images", metavar="DIR", help="image folder (instead of DIR/images)")
    data.add_argument("--masks", metavar="DIR", help="mask folder (instead of DIR/masks)")
    model = p.add_argument_group("model (the default when --preds is not given: the bundled model)")
    model.add_argument("--model", metavar="PATH", help="artifact file or exported model folder (default: bundled)")
    model.add_argument("--backend", help="runtime (default: the preferred installed one for the model)")
    model.add_argument("--threads", type=runtime_threads, default=None, help=THREADS_HELP)
    model.add_argument("--policy", choices=("resize", "native", "tile"), default="resize",
                       help="frame-size policy: resize = the authors' protocol (image to the model's input size, "
                            "label resized to it); native / tile = full resolution")
    model.add_argument("--save-preds", metavar="DIR", help="also save each logit map as DIR/<stem>.npy")
    preds = p.add_argument_group("predictions")
    preds.add_argument("--preds", metavar="DIR",
                       help="saved maps <stem>.npy (float) or <stem>.png (8/16-bit probabilities or 0/1 masks)")
    preds.add_argument("--logits", action="store_true",
                       help=".npy maps hold logits (thresholded at logit(--threshold): logit > 0 by default)")
    preds.add_argument("--pred-maps", choices=MAP_READINGS, default="auto",
                       help="integer maps (PNG...) are probability levels (/255, 16-bit /65535) or 0/1 masks, one "
                            "reading for the whole folder; auto: masks if no map exceeds 1 (default: %(default)s)")
    preds.add_argument("--resize-labels", action="store_true",
                       help="resize a label to its prediction's size (centre-aligned nearest), e.g. for maps saved "
                            "at 256x256 (the authors' protocol)")
    conv = p.add_argument_group("conventions")
    conv.add_argument("--compat", choices=COMPAT_MODES, default="none",
                      help="stdeval: STD-EvalKit's figures; dnanet: DNANet's DEFECTIVE Pd/Fa, for comparison with "
                           "published tables only (default: %(default)s)")
    conv.add_argument("--matching", choices=MATCHING_RULES, default=None,
                      help="target matching (default: hungarian; greedy under --compat)")
    conv.add_argument("--connectivity", type=int, choices=(4, 8), default=None,
                      help="component connectivity (default 8; 4 is scipy.ndimage.label's default)")
    conv.add_argument("--gate", choices=OVERLAP_GATES, default=None, help="pairs also need mask/box IoU > 0")
    conv.add_argument("--threshold", type=float, default=None,
                      help="operating point as a probability (default 0.5, i.e. logit 0)")
    conv.add_argument("--distance", type=float, default=REPORT_DISTANCE,
                      help="centroid distance (px) of the headline Pd/Fa/F1 (default: %(default)s)")
    out = p.add_argument_group("output")
    out.add_argument("--per-distance", action="store_true", help="print one row per distance threshold 1..10")
    out.add_argument("--box-map", action="store_true", help="also COCO box mAP of the components")
    out.add_argument("--nocoap", action="store_true", help="also mNoCoAP (reads the images for the contrast map)")
    out.add_argument("--json", metavar="PATH", help="write every figure, curve and convention as JSON")
    out.add_argument("--plots", metavar="DIR", help="write roc.png, pr.png, pd_fa.png (needs matplotlib)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")


def run(args) -> int:
    from edge_irst.datasets import IrstdDataset
    from edge_irst.metrics import BoxAP, IrstdMetrics, NoCoAP, evaluate, prediction_folder

    if args.data is None and args.images is None:
        return _usage("give --data DIR (with images/ and masks/) or --images DIR --masks DIR")
    if args.preds is not None and args.model is not None:
        return _usage("give either --preds DIR (saved maps) or --model (run a model), not both")
    compat = None if args.compat == "none" else args.compat
    distances = sorted({float(d) for d in range(1, 11)} | {args.distance})
    metrics = [IrstdMetrics(compat=compat, matching=args.matching, gate=args.gate, threshold=args.threshold,
                            connectivity=args.connectivity, distances=distances, report_distance=args.distance)]
    # the component metrics find components as the IRSTD ones do (connectivity, and the comparison of --compat)
    components = {"threshold": args.threshold, "compat": compat, "connectivity": args.connectivity}
    if args.box_map:
        metrics.append(BoxAP(**components))
    if args.nocoap:
        metrics.append(NoCoAP(**components))
    dataset = IrstdDataset(args.data, args.split, images=args.images, masks=args.masks)
    if args.preds is not None:
        predict = prediction_folder(args.preds, logits=args.logits, maps=args.pred_maps)
        resize_labels, source = args.resize_labels, str(args.preds)
        if predict.integer_maps is False:
            maps_read = f"no integer maps in {source}: every map is floating point (or boolean)"
        else:
            why = ("--pred-maps" if args.pred_maps != "auto" else
                   "auto: no map exceeds 1" if predict.reading == "mask" else "auto: a map exceeds 1")
            maps_read = f"integer maps of {source} read as {_READINGS[predict.reading]} ({why})"
    else:
        predict, source = _model_predictions(args)
        resize_labels = True  # resize policy: the label goes to the model's grid (the authors' protocol)
        maps_read = None
    log.info("evaluating %d samples of %s against %s", len(dataset), args.data or args.images, source)
    report = evaluate(dataset, predict, metrics, resize_labels=resize_labels, with_images=args.nocoap,
                      progress=False if args.no_progress else None)
    print(report.table(per_distance=args.per_distance))
    if maps_read:
        print(maps_read)
    if args.json:
        path = Path(args.json)
        doc = {"data": str(args.data or args.images), "split": args.split, "predictions": source,
               "prediction_maps": maps_read,
               "logits": args.logits or args.preds is None, "policy": None if args.preds else args.policy,
               **report.to_dict()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            raise InputError(f"--json {args.json}: cannot be written ({exc})") from exc
        log.info("wrote %s", path)
    if args.plots:
        from edge_irst.metrics.plots import save_plots

        try:
            written = save_plots(report.results[IrstdMetrics.name], args.plots)
        except OSError as exc:
            raise InputError(f"--plots {args.plots}: cannot be written ({exc})") from exc
        for path in written:
            log.info("wrote %s", path)
    return 0


_READINGS = {"mask": "0/1 masks", "probabilities": "probability levels (/255, 16-bit /65535)"}


def _model_predictions(args):
    """predict_fn running a Detector (grid logits, see Detector.grid_logits), and a description of the model."""
    from edge_irst.pipeline import Detector

    detector = Detector(model=args.model, backend=args.backend, threads=args.threads, policy=args.policy)
    save = Path(args.save_preds) if args.save_preds else None
    if save:
        save.mkdir(parents=True, exist_ok=True)

    def predict(sample, image):
        grid, _, _ = detector.grid_logits(image)
        if save:
            np.save(save / f"{sample.stem}.npy", grid)
        return grid, "logits"

    described = f"{args.model or 'the bundled model'} on {detector.backend.name} ({args.policy} policy)"
    return predict, described


def _usage(message: str) -> int:
    print(f"edge-irst eval: error: {message}", file=sys.stderr)
    return 2

"""`edge-irst export`: PyTorch weights -> verified ONNX / NCNN / MNN / TFLite artifacts in one model folder.

The table of results goes to stdout (or the manifest as JSON with --json); progress goes to stderr.
Exit 0: every artifact written (fp16/int8 ones may be UNVERIFIED, with the reason); 1: a converter failed or an
fp32 artifact disagrees with PyTorch (the table is still printed), or bad weights / size / folder / converter;
2: usage error (unknown format or precision, conflicting flags).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from edge_irst.cli import positive_int
from edge_irst.errors import EdgeIrstError


def _names_type(valid, kind: str):
    def parse(value: str) -> list[str]:
        from edge_irst.export.formats import parse_names

        try:
            return parse_names(value, valid, kind)
        except EdgeIrstError as exc:  # argparse turns this into a usage error (exit 2)
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edge_irst.export.formats import FORMATS, PRECISIONS, format_help

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("formats (precisions) [pip extra that installs the converter]:\n" + format_help() + "\n\n"
                "example: edge-irst export --weights LW_IRST.pkl --format onnx,ncnn,mnn --precision fp32,fp16")
    p.add_argument("--weights", required=True, metavar="CKPT",
                   help="edge-irst checkpoint, a bare state dict, or the authors' LW_IRST.pkl")
    p.add_argument("--format", dest="formats", default=["onnx"], type=_names_type(FORMATS, "export format"),
                   metavar="F[,F...]", help=f"comma-separated: {', '.join(FORMATS)} (default: onnx)")
    p.add_argument("--precision", dest="precisions", default=["fp32"], type=_names_type(PRECISIONS, "precision"),
                   metavar="P[,P...]", help=f"comma-separated: {', '.join(PRECISIONS)} (default: fp32)")
    p.add_argument("--calib", metavar="DIR|ROOT:SPLIT", default=None,
                   help="images to calibrate int8 on and verify every artifact on: a folder, or a dataset split "
                        "(ROOT with images/, SPLIT a stem list; use a training list) (default: the authors' sample "
                        "frames when ../shared exists, else synthetic IR frames)")
    p.add_argument("--calib-limit", type=positive_int, default=64, metavar="N",
                   help="use at most N calibration images, evenly spaced in name order (default: %(default)s)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--imgsz", default=None, metavar="N|H,W",
                      help="fixed input size, multiples of 8 (default: 256)")
    size.add_argument("--dynamic", action="store_true",
                      help="symbolic H/W (multiples of 8) for ONNX, ncnn, MNN and TFLite, so full-resolution frames "
                           "run; traced and verified at 256x256 and 320x480")
    p.add_argument("--grey-input", action="store_true",
                   help="artifacts that take the IR frame as one grey channel: the RGB model's result on grey frames, "
                        "with a third of the input to preprocess (models/grey_input.py)")
    p.add_argument("--out", default="runs/export", metavar="DIR",
                   help="parent folder; artifacts go to DIR/<name>/ (default: %(default)s)")
    p.add_argument("--name", default=None, help="model folder name (default: the architecture, e.g. lw_irstnet)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch threads (tracing, reference logits) and runtime threads during verification "
                        "(default: each library's own)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON instead of the table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def _print(report, as_json: bool) -> None:
    if as_json:
        json.dump({**report.to_manifest(), "folder": str(report.folder)}, sys.stdout, indent=2)
        print()
    else:
        print(report.table())


def run(args) -> int:
    from edge_irst.export import ConversionError, export
    from edge_irst.errors import VerificationError

    if not args.quiet:
        logging.getLogger("edge_irst.export").setLevel(logging.INFO)
    try:
        report = export(args.weights, formats=args.formats, precisions=args.precisions, calib=args.calib,
                        imgsz=args.imgsz or 256, dynamic=args.dynamic, out=args.out, name=args.name,
                        threads=args.threads, calib_limit=args.calib_limit, grey_input=args.grey_input)
    except (VerificationError, ConversionError) as exc:
        if getattr(exc, "report", None) is not None:
            _print(exc.report, args.json)
        raise
    _print(report, args.json)
    return 0

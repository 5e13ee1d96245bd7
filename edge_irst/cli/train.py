"""`edge-irst train`: train a registry model on IRSTD datasets (needs the [export] extra: torch)."""
from __future__ import annotations

import argparse
import json
import sys

from edge_irst.cli import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", required=True, metavar="ROOT[:SPLIT]",
                   help="training set: a folder with images/ and masks/, optionally ':' + split list relative to "
                        "it; repeat for several (e.g. --data shared/data/sirst:idx_427/trainval.txt)")
    p.add_argument("--val", action="append", default=[], metavar="ROOT[:SPLIT]",
                   help="validation set(s); default: every --holdout-th stem of the training sets")
    p.add_argument("--holdout", type=int, default=10, help="hold out every N-th training stem for validation")
    p.add_argument("--model", default="lw_irstnet", help="registry model name (default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=60,
                   help="length of the schedule; fixed once a run starts (--resume refuses a change)")
    p.add_argument("--batch", type=positive_int, default=8, dest="batch_size")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw", "adagrad"),
                   help="sgd (momentum 0.9) is the paper's recipe; adamw converges in far fewer CPU epochs")
    p.add_argument("--lr", type=float, default=0.05, help="initial lr, poly decay (power 0.9)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--imgsz", type=int, default=256, dest="size", help="training crop size")
    p.add_argument("--blur", type=float, default=0.5, dest="blur_prob", help="Gaussian blur probability")
    p.add_argument("--synthetic-targets", type=float, default=0.0, dest="synthetic_targets_prob",
                   help="probability of pasting simulated point targets onto a training crop")
    p.add_argument("--ema", type=float, default=0.0, dest="ema_decay", metavar="DECAY",
                   help="keep an exponential moving average of the weights (e.g. 0.999); validation and best.pt "
                        "use it (default: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--out", default="runs/train", help="run folder: last.pt, best.pt, log.csv/json, curves.png")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="warm start from these weights (fresh optimizer and schedule); --resume continues a run")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt if it exists, exactly: every setting but --threads and --device "
                        "must be the run's (an --init too, which is then the run's origin, not loaded again)")
    p.add_argument("--epochs-this-run", type=positive_int, default=None,
                   help="stop after this many more epochs of the schedule (time-boxed sessions; --resume later)")
    p.add_argument("--max-iters-per-epoch", type=int, default=None, help=argparse.SUPPRESS)


def run(args) -> int:
    from edge_irst.models.train import TrainConfig, train

    fields = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(train=args.data, **{k: v for k, v in vars(args).items()
                                          if k in fields and k not in ("train", "epochs_this_run")})
    result = train(cfg, resume=args.resume, epochs_this_run=args.epochs_this_run)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0

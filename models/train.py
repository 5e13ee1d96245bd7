"""Training: the paper's recipe (SoftIoU loss, SGD momentum 0.9, weight decay 1e-4, lr 0.05 with poly decay).

Deterministic for a seed on one device: the sample order and every augmentation draw come from a numpy Generator
seeded by (seed, epoch); torch's RNG (dropout) is saved with the resume state. Resumable: `last.pt` (model,
optimizer, epoch, iteration, RNG, history) is written atomically after every epoch, `--resume` continues exactly
there, with the configuration the run started with (a change of anything but threads or device is refused, the
epochs included: the lr schedule spans them; `--init` may be repeated, it is the run's origin). The best epoch by
validation IoU is saved as `best.pt` in the edge-irst checkpoint format (loadable with
`torch.load(weights_only=True)`, exportable as is). Inputs go through `edge_irst.preprocess` — the same code the
runtime uses — so a trained model needs no glue to deploy.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from edge_irst.contract import AUTHORS_CONTRACT, ModelContract
from edge_irst.datasets import IrstdDataset
from edge_irst.errors import InputError
from edge_irst.metrics import EvalItem, IrstdMetrics, evaluate_items
from edge_irst.preprocess import normalize, preprocess, to_channels
from edge_irst.progress import Progress

from .augment import AugmentConfig, augment
from .checkpoint import TRAIN_STATE_FORMAT as RESUME_FORMAT
from .checkpoint import save_checkpoint
from .registry import create_model, model_entry

log = logging.getLogger(__name__)
# TrainConfig fields a resumed session may change: how fast it runs (threads) and on what (device; bit-exactness
# holds on one device only). Every other field but `out` (the folder last.pt was found in, however it is spelled)
# changes what the run computes (the epochs too: the poly lr schedule spans all of them): `--resume` refuses it.
RESUME_MAY_CHANGE = ("threads", "device")


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in every checkpoint and log so a run can be reproduced."""

    train: list[str]  # dataset specs "ROOT" or "ROOT:SPLIT" (split relative to ROOT)
    val: list[str] = field(default_factory=list)  # empty: every `holdout`-th training stem validates
    holdout: int = 10
    model: str = "lw_irstnet"
    model_overrides: dict = field(default_factory=dict)
    epochs: int = 60
    batch_size: int = 16
    optimizer: str = "sgd"  # the paper's; "adamw" / "adagrad" for short CPU budgets (see README: training)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    size: int = 256
    blur_prob: float = 0.5
    synthetic_targets_prob: float = 0.0
    seed: int = 0
    threads: Optional[int] = None
    device: str = "auto"
    out: str = "runs/train"
    init: Optional[str] = None  # warm start: weights from this checkpoint, fresh optimizer and lr schedule
    # Exponential moving average of the weights (and BN statistics), e.g. 0.999 ~ the last 1000 steps; 0 = off.
    # With it on, validation, best.pt and the best-epoch choice use the averaged weights.
    ema_decay: float = 0.0
    max_iters_per_epoch: Optional[int] = None  # for smoke tests


def _check_config(cfg: TrainConfig) -> None:
    """InputError for a setting no run can use, before any data is read (torch would fail later, and less clearly)."""
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise InputError(f"{name} {getattr(cfg, name)!r}: expected a whole number >= 1")
    if cfg.threads is not None and cfg.threads < 1:
        raise InputError(f"threads {cfg.threads!r}: expected a whole number >= 1, or None for torch's choice")
    stride = model_entry(cfg.model).meta.get("stride", 1)
    if cfg.size < stride or cfg.size % stride:
        below = cfg.size // stride * stride
        nearest = " or ".join(str(v) for v in (below, below + stride) if v >= stride)
        raise InputError(f"imgsz {cfg.size}: {cfg.model} takes multiples of its stride {stride}; nearest: {nearest}")


def _config_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    """'field: saved X, requested Y' for each field of `cfg` but RESUME_MAY_CHANGE and out that differs from `saved`
    (a state's config; a field it predates counts as that field's default)."""
    differences = []
    for item in dataclasses.fields(TrainConfig):
        if item.name in RESUME_MAY_CHANGE or item.name == "out":
            continue
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        before, now = saved.get(item.name, default), getattr(cfg, item.name)
        if before != now:
            differences.append(f"{item.name}: saved {before!r}, requested {now!r}")
    return differences


def check_resumable(path: Path, state: dict, cfg: TrainConfig) -> None:
    """InputError unless `state` (read from `path`) is a training state that `cfg` continues exactly: same model
    and same configuration but for RESUME_MAY_CHANGE, and not fewer epochs than it has done."""
    if state.get("format") != RESUME_FORMAT:
        raise InputError(f"{path} is not an edge-irst training state (format {state.get('format')!r})")
    saved = state["config"]
    if saved["model"] != cfg.model:
        raise InputError(f"{path} trains {saved['model']!r}, not {cfg.model!r}")
    differences = _config_differences(saved, cfg)
    if not differences:
        return
    if cfg.epochs < state["epoch"]:
        differences.append(f"--epochs {cfg.epochs} is below the {state['epoch']} epochs this run has already done")
    schedule = ""
    if cfg.epochs != saved["epochs"]:
        schedule = (f" The lr schedule decays over the {saved['epochs']} epochs the run started with, so --epochs "
                    f"cannot change mid-run (--epochs-this-run N ends a session early).")
    raise InputError(f"{path}: this run was started with another configuration: {'; '.join(differences)}.{schedule} "
                     f"--resume continues a run exactly: pass the settings it was started with (in "
                     f"{path.parent / 'log.json'}), or start a new run in another --out (with --init "
                     f"{path.parent / 'best.pt'} to start from its weights); only {' and '.join(RESUME_MAY_CHANGE)} "
                     f"may change between sessions")


def _parse_spec(spec: str) -> tuple[str, Optional[str]]:
    root, _, split = spec.partition(":")
    return root, (split or None)


def _load_images(specs: list[str], contract: ModelContract, holdout: int, take_holdout: bool):
    """[(stem, rgb uint8 HxWx3, mask bool HxW)] for the specs; holdout>0 keeps (or drops) every holdout-th stem."""
    out = []
    for spec in specs:
        ds = IrstdDataset(*_parse_spec(spec))
        for i, sample in enumerate(ds.samples):
            held = holdout > 0 and i % holdout == holdout - 1
            if held != take_holdout:
                continue
            image, mask = ds.load(i)
            if mask is None:
                continue  # reported by the dataset's mismatch rule
            out.append((f"{Path(spec.split(':')[0]).name}/{sample.stem}", to_channels(image, contract), mask))
    return out


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - (|P.T| + s) / (|P| + |T| - |P.T| + s) with sums over the WHOLE batch, P = sigmoid(logits), [N,1,H,W].

    Batch-level sums as in the reference SoftIoU implementations of this field. A per-image mean would score an
    empty prediction on a crop without targets as a perfect 1 (0 + s over 0 + s), and random crops often hold no
    target: measured here, that drove the net to predict nothing at all within two epochs.
    """
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    union = prob.sum() + target.sum() - inter
    return 1.0 - (inter + smooth) / (union + smooth)


def _poly_lr(cfg: TrainConfig, iteration: int, total: int) -> float:
    return cfg.lr * (1.0 - min(iteration, total - 1) / total) ** cfg.poly_power


def _make_optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise InputError(f"unknown optimizer {cfg.optimizer!r}: use sgd (the paper's), adamw or adagrad")


def _device(name: str) -> torch.device:
    """auto = the first GPU when torch sees one, else the CPU; a named device must exist (a clear error instead of
    torch's assertion at the first tensor moved)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"device {name!r}: {exc}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()  # 0 on a CPU-only build or without a usable driver
        if count == 0:
            raise InputError(f"device {name!r}: torch {torch.__version__} sees no CUDA GPU here; train with "
                             f"--device cpu, or --device auto to use a GPU only where there is one")
        if device.index is not None and device.index >= count:
            raise InputError(f"device {name!r}: only {count} CUDA GPU(s) here (cuda:0..cuda:{count - 1})")
    return device


@torch.no_grad()
def validate(model, samples, contract: ModelContract, device, batch: int = 16) -> dict:
    """Pixel IoU (dataset level), nIoU (mean per image) and Pd / Fa at 3 px, computed exactly as `edge-irst eval`
    does for the resize policy: the image through the runtime's preprocessing (bilinear to the model's input),
    the label resized to the logit map (centre-aligned nearest), logit > threshold, edge_irst.metrics defaults
    (Hungarian matching, 8-connectivity)."""
    model.eval()
    items = []
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        x = np.concatenate([preprocess(rgb[:, :, ::-1].copy(), contract) for _, rgb, _ in chunk])
        logits = model(torch.from_numpy(x).to(device)).float().cpu().numpy()[:, 0]
        items += [EvalItem(stem, mask, logit_map, "logits") for (stem, _, mask), logit_map in zip(chunk, logits)]
    # The metrics take the operating point as a probability: logit > L  <=>  sigmoid(logit) > sigmoid(L).
    metrics = IrstdMetrics(threshold=1.0 / (1.0 + np.exp(-contract.threshold)), distances=(3,), curves=False)
    summary = evaluate_items(items, [metrics], resize_labels=True, progress=False).results[metrics.name].summary()
    return {key: float(summary[key]) for key in ("iou", "niou", "pd", "fa")}


class Trainer:
    def __init__(self, cfg: TrainConfig, resuming: bool = False):
        """resuming: `load_state` follows, so the weights come from there: no warm start from cfg.init (it is the
        run's origin, already in the state) nor output-prior draw."""
        _check_config(cfg)
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = _device(cfg.device)
        self.contract = AUTHORS_CONTRACT.replace(
            architecture=cfg.model, input_size=(cfg.size, cfg.size), provenance="edge-irst training")
        torch.manual_seed(cfg.seed)
        self.model = create_model(cfg.model, **cfg.model_overrides).to(self.device)
        # NHWC activations: 1.10x training images/s at 1 thread, 1.19x at 2 on a 2-core x86 CPU
        # (benchmarks/training.py); the saved weights are made contiguous again by save_checkpoint.
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.optimizer = _make_optimizer(cfg, self.model.parameters())
        if not 0.0 <= cfg.ema_decay < 1.0:
            raise InputError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
        self.train_samples = _load_images(cfg.train, self.contract, cfg.holdout if not cfg.val else 0, False)
        self.val_samples = (_load_images(cfg.val, self.contract, 0, False) if cfg.val
                            else _load_images(cfg.train, self.contract, cfg.holdout, True))
        if not self.train_samples:
            raise InputError(f"no training samples in {cfg.train}")
        if not self.val_samples:
            raise InputError(f"no validation samples in {cfg.val} (no stem with a mask); pass --val sets that have "
                             f"masks" if cfg.val else
                             f"no validation samples: without --val every --holdout-th training stem validates, and "
                             f"--holdout {cfg.holdout} holds out none of the {len(self.train_samples)} training stems "
                             f"of {cfg.train}; pass --val ROOT[:SPLIT] (never a test list) or a --holdout from 1 to "
                             f"the number of training stems")
        self.aug = AugmentConfig(size=cfg.size, blur_prob=cfg.blur_prob,
                                 synthetic_targets_prob=cfg.synthetic_targets_prob)
        per_epoch = len(self.train_samples) // cfg.batch_size
        if cfg.max_iters_per_epoch:
            per_epoch = min(per_epoch, cfg.max_iters_per_epoch)
        self.iters_per_epoch = max(per_epoch, 1)
        self.total_iters = self.iters_per_epoch * cfg.epochs
        self.epoch, self.iteration, self.best_iou, self.history = 0, 0, -1.0, []
        prior = getattr(self.model, "init_background_prior", None)  # a model may define its own output prior
        if cfg.init and not resuming:
            self._warm_start(Path(cfg.init))
        elif prior is not None and not resuming:
            x, _ = next(self._batches(self._PRIOR_STREAM))  # its own stream: the epochs' draws stay unchanged
            prior(x.to(self.device))
        self.ema = self._make_ema()

    def _make_ema(self):
        """torch's AveragedModel (EMA of parameters and buffers), built after any warm start so it starts there."""
        if not self.cfg.ema_decay:
            return None
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        return AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema_decay), use_buffers=True)

    @property
    def eval_model(self):
        """The weights that are validated and saved as best.pt: the EMA when enabled, else the trained ones."""
        return self.model if self.ema is None else self.ema.module

    def _warm_start(self, path: Path) -> None:
        """Start from another run's weights (e.g. a longer schedule on top of an earlier best.pt); only the weights
        travel: optimizer, epoch counter and lr schedule start fresh. Any format load_checkpoint accepts."""
        from .checkpoint import load_checkpoint

        loaded = load_checkpoint(path, architecture=self.cfg.model, eval_mode=False)
        if loaded.model_config != self.cfg.model_overrides:
            raise InputError(f"{path}: model config {loaded.model_config} differs from this run's "
                             f"{self.cfg.model_overrides}")
        self.model.load_state_dict(loaded.model.state_dict())
        log.warning("warm start from %s (sha256 %s...)", path, loaded.sha256[:12])

    # --- resume state -------------------------------------------------------------------------------------------
    def save_state(self) -> Path:
        state = {
            "format": RESUME_FORMAT, "config": dataclasses.asdict(self.cfg), "epoch": self.epoch,
            "iteration": self.iteration, "best_iou": self.best_iou, "history": self.history,
            "model_state": self.model.state_dict(), "optimizer_state": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.ema is not None:
            state["ema_state"] = self.ema.state_dict()
        path = self.out / "last.pt"
        torch.save(state, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        return path

    def load_state(self, path: Path, state: Optional[dict] = None) -> None:
        """Continue the run saved in `path` (its last.pt; `state`: its content where the caller has read it already);
        InputError when this Trainer's config does not continue it exactly (check_resumable)."""
        path = Path(path)
        if state is None:
            state = torch.load(path, map_location=self.device, weights_only=True)
        check_resumable(path, state, self.cfg)
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        if (self.ema is None) != ("ema_state" not in state):
            raise InputError(f"{path} was saved with ema_decay={state['config'].get('ema_decay', 0.0)}; "
                             f"this run has {self.cfg.ema_decay}: resume with the same setting")
        if self.ema is not None:
            self.ema.load_state_dict(state["ema_state"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.best_iou, self.history = state["best_iou"], state["history"]
        log.warning("resumed from %s at epoch %d, iteration %d", path, self.epoch, self.iteration)

    # --- loop ---------------------------------------------------------------------------------------------------
    _PRIOR_STREAM = 2**31  # an "epoch" number no run reaches, for the init-time draw

    def _batches(self, epoch: int):
        rng = np.random.default_rng([self.cfg.seed, epoch])
        order = rng.permutation(len(self.train_samples))
        bs = self.cfg.batch_size
        for b in range(self.iters_per_epoch):
            images, masks = [], []
            for idx in order[b * bs:(b + 1) * bs]:
                _, rgb, mask = self.train_samples[idx]
                img, m = augment(rgb, mask, self.aug, rng)
                images.append(normalize(img, self.contract))
                masks.append(m[None].astype(np.float32))
            yield torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))

    def train_epoch(self) -> dict:
        self.model.train()
        losses, seen, start = [], 0, time.perf_counter()
        with Progress(self.iters_per_epoch, f"epoch {self.epoch + 1}/{self.cfg.epochs}") as bar:
            for x, y in self._batches(self.epoch):
                lr = _poly_lr(self.cfg, self.iteration, self.total_iters)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                x = x.to(self.device).contiguous(memory_format=self.memory_format)
                loss = soft_iou_loss(self.model(x), y.to(self.device))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                self.iteration += 1
                losses.append(loss.item())
                seen += x.shape[0]
                bar.update(postfix=f"loss {np.mean(losses):.4f} lr {lr:.4f}")
        return {"loss": float(np.mean(losses)), "lr": lr, "images_per_s": seen / (time.perf_counter() - start)}

    def fit(self, epochs_this_run: Optional[int] = None) -> dict:
        """Train to the end of the schedule, or only `epochs_this_run` more epochs of it (a time-boxed session;
        `--resume` continues the same schedule later)."""
        if epochs_this_run is not None and epochs_this_run < 1:
            raise InputError(f"epochs_this_run {epochs_this_run!r}: expected a whole number >= 1, or None for all")
        stop = self.cfg.epochs if epochs_this_run is None else min(self.cfg.epochs, self.epoch + epochs_this_run)
        while self.epoch < stop:
            stats = self.train_epoch()
            val = validate(self.eval_model, self.val_samples, self.contract, self.device)
            self.epoch += 1
            row = {"epoch": self.epoch, "iteration": self.iteration, **stats, **{f"val_{k}": v for k, v in val.items()}}
            if self.ema is not None:  # the raw weights too, so the log shows what the averaging buys
                raw = validate(self.model, self.val_samples, self.contract, self.device)
                row.update({f"val_raw_{k}": v for k, v in raw.items()})
            self.history.append(row)
            if val["iou"] > self.best_iou:
                self.best_iou = val["iou"]
                self.save_best(row)
            self.save_state()
            self._write_logs()
            log.warning("epoch %d: loss %.4f, val IoU %.4f nIoU %.4f Pd %.4f Fa %.2e (best IoU %.4f), %.1f img/s",
                        self.epoch, stats["loss"], val["iou"], val["niou"], val["pd"], val["fa"], self.best_iou,
                        stats["images_per_s"])
        self._plot()
        return {"best_iou": self.best_iou, "epochs": self.epoch, "of_epochs": self.cfg.epochs, "out": str(self.out)}

    def save_best(self, row: dict) -> Path:
        meta = {"train_config": dataclasses.asdict(self.cfg), "epoch": row["epoch"], "validation": row,
                "trained_with": "edge-irst train"}
        return save_checkpoint(self.out / "best.pt", self.eval_model, self.cfg.model, self.cfg.model_overrides,
                               self.contract, meta)

    def _write_logs(self) -> None:
        (self.out / "log.json").write_text(json.dumps(
            {"config": dataclasses.asdict(self.cfg), "history": self.history}, indent=1) + "\n")
        with open(self.out / "log.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(self.history[0]))
            writer.writeheader()
            writer.writerows(self.history)

    def _plot(self) -> Optional[Path]:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log.warning("matplotlib not installed: no curves.png (pip install matplotlib)")
            return None
        epochs = [r["epoch"] for r in self.history]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot(epochs, [r["loss"] for r in self.history], label="train SoftIoU loss")
        ax1.set_xlabel("epoch"), ax1.legend()
        for key in ("val_iou", "val_niou", "val_pd"):
            ax2.plot(epochs, [r[key] for r in self.history], label=key)
        ax2.set_xlabel("epoch"), ax2.set_ylim(0, 1), ax2.legend()
        fig.tight_layout()
        path = self.out / "curves.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def train(cfg: TrainConfig, resume: bool = False, epochs_this_run: Optional[int] = None) -> dict:
    """Run `cfg` (resume: continue it from out/last.pt where there is one, see check_resumable) to the end of its
    schedule, or for `epochs_this_run` more epochs of it."""
    model_entry(cfg.model)  # unknown names fail before any data is read
    last = Path(cfg.out) / "last.pt"
    resuming = resume and last.is_file()
    state = torch.load(last, map_location="cpu", weights_only=True) if resuming else None
    if resuming:  # a configuration that does not continue the run fails here, before the data is read
        check_resumable(last, state, cfg)
    trainer = Trainer(cfg, resuming=resuming)
    if resuming:
        trainer.load_state(last, state)
        if trainer.epoch >= cfg.epochs:
            log.warning("%s: this run already did all its %d epochs; nothing to train", last, cfg.epochs)
    return trainer.fit(epochs_this_run)

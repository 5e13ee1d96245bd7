"""Training: a short run learns, writes a weights-only checkpoint that exports; resume is exact."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the [export] extra (torch==2.13.0)")

from edge_irst.cli import main  # noqa: E402
from edge_irst.errors import InputError  # noqa: E402
from edge_irst.models import load_checkpoint  # noqa: E402
from edge_irst.models.train import TrainConfig, Trainer, soft_iou_loss, train  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """12 synthetic 96x96 IR-like frames (noisy background, 1-3 bright blobs) with masks, SIRST layout."""
    root = tmp_path_factory.mktemp("tiny_irstd")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:96, 0:96]
    for i in range(12):
        image = rng.normal(60, 6, (96, 96))
        mask = np.zeros((96, 96), bool)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx, s = rng.uniform(10, 86), rng.uniform(10, 86), rng.uniform(1.0, 2.0)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
            image += 120 * blob
            mask |= blob > 0.3
        cv2.imwrite(str(root / "images" / f"{i:03d}.png"), np.clip(image, 0, 255).astype(np.uint8))
        cv2.imwrite(str(root / "masks" / f"{i:03d}.png"), mask.astype(np.uint8) * 255)
    (root / "train.txt").write_text("\n".join(f"{i:03d}" for i in range(9)))
    (root / "val.txt").write_text("\n".join(f"{i:03d}" for i in range(9, 12)))
    return root


def _config(root, out, **kw):
    base = dict(train=[f"{root}:train.txt"], val=[f"{root}:val.txt"], out=str(out), batch_size=3, size=64,
                epochs=2, max_iters_per_epoch=3, optimizer="adamw", lr=3e-3, threads=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_soft_iou_loss_is_batch_level():
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, 1, 1] = 1
    confident = torch.full((2, 1, 4, 4), -30.0)
    confident[0, 0, 1, 1] = 30.0
    assert float(soft_iou_loss(confident, target)) < 1e-6
    # An empty prediction on the image that has a target is not rescued by the image that has none.
    assert float(soft_iou_loss(torch.full((2, 1, 4, 4), -30.0), target)) > 0.4


def test_short_run_learns_and_writes_an_exportable_checkpoint(tiny_dataset, tmp_path):
    cfg = _config(tiny_dataset, tmp_path / "run", epochs=6, max_iters_per_epoch=3)
    result = train(cfg)
    with open(tmp_path / "run" / "log.csv") as fh:
        history = list(csv.DictReader(fh))
    assert len(history) == 6
    losses = [float(row["loss"]) for row in history]
    assert losses[-1] < losses[0], losses
    doc = torch.load(tmp_path / "run" / "best.pt", weights_only=True)  # no pickle trust needed
    assert doc["format"] == "edge-irst/checkpoint" and doc["meta"]["epoch"] >= 1
    assert doc["contract"]["input_size"] == [64, 64]
    loaded = load_checkpoint(tmp_path / "run" / "best.pt")
    assert result["best_iou"] == pytest.approx(max(float(row["val_iou"]) for row in history))
    export = pytest.importorskip("edge_irst.export")
    report = export.export(tmp_path / "run" / "best.pt", formats=["onnx"], out=tmp_path / "exported")
    assert report.artifacts and not report.failures
    assert all(a["verified"] for a in report.to_manifest()["artifacts"])
    assert loaded.architecture == "lw_irstnet"


def test_resume_continues_exactly_where_it_stopped(tiny_dataset, tmp_path):
    straight = Trainer(_config(tiny_dataset, tmp_path / "straight"))
    straight.fit()
    first = Trainer(_config(tiny_dataset, tmp_path / "split"))
    first.fit(epochs_this_run=1)  # the session "ends" after one epoch of the two-epoch schedule
    resumed = Trainer(_config(tiny_dataset, tmp_path / "split"), resuming=True)  # as train(resume=True) does
    resumed.load_state(tmp_path / "split" / "last.pt")
    assert resumed.iteration == first.iteration == 3
    assert resumed.optimizer.state_dict()["state"], "optimizer state (moments) must come back"
    resumed.fit()
    assert resumed.iteration == straight.iteration == 6
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    lr_straight = straight.optimizer.param_groups[0]["lr"]
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(lr_straight)


def test_resume_refuses_a_changed_configuration_and_names_each_change(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train(_config(tiny_dataset, run), epochs_this_run=1)  # one epoch of the two-epoch schedule
    with pytest.raises(InputError, match=r"started with another configuration: batch_size: saved 3, requested 2; "
                                         r"lr: saved 0\.003, requested 0\.01; seed: saved 3, requested 4\..*"
                                         r"only threads and device may change"):
        train(_config(tiny_dataset, run, lr=1e-2, batch_size=2, seed=4), resume=True)
    with pytest.raises(InputError, match=r"init: saved None, requested '.*best\.pt'"):
        train(_config(tiny_dataset, run, init=str(run / "best.pt")), resume=True)
    with pytest.raises(InputError, match=r"epochs: saved 2, requested 3\. The lr schedule decays over the 2 epochs"):
        train(_config(tiny_dataset, run, epochs=3), resume=True)
    # What may change between sessions does not stop it: another device spelling continues the same run.
    resumed = Trainer(_config(tiny_dataset, run, device="cpu"), resuming=True)
    resumed.load_state(run / "last.pt")
    assert resumed.epoch == 1 and resumed.iteration == 3


def test_resume_with_fewer_epochs_than_done_is_an_error_not_a_no_op(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train(_config(tiny_dataset, run))  # both epochs done
    with pytest.raises(InputError, match="--epochs 1 is below the 2 epochs this run has already done"):
        train(_config(tiny_dataset, run, epochs=1), resume=True)
    assert train(_config(tiny_dataset, run), resume=True)["epochs"] == 2  # the finished run, as it was


def test_the_readme_recipe_resumes_with_the_same_command_init_included(tiny_dataset, tmp_path, capsys):
    """README, "Training and the bundled model": one command, `--init INTERIM.pt ... --resume`, run session after
    session: the first warm-starts from --init, the next continue from last.pt."""
    first = tmp_path / "first"
    train(_config(tiny_dataset, first, epochs=1, max_iters_per_epoch=2))
    command = ["train", "--data", f"{tiny_dataset}:train.txt", "--val", f"{tiny_dataset}:val.txt", "--epochs", "2",
               "--batch", "3", "--optimizer", "adamw", "--lr", "0.002", "--imgsz", "64", "--threads", "1",
               "--init", str(first / "best.pt"), "--out", str(tmp_path / "bundled"), "--resume",
               "--max-iters-per-epoch", "2"]
    assert main(command + ["--epochs-this-run", "1"]) == 0  # a session that ends after one epoch
    assert main(command) == 0
    with open(tmp_path / "bundled" / "log.csv") as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["1", "2"]
    assert '"epochs": 2' in capsys.readouterr().out


def test_bad_settings_fail_before_any_data_is_read_or_epoch_trained(tiny_dataset, tmp_path, capsys):
    with pytest.raises(InputError, match="imgsz 60: lw_irstnet takes multiples of its stride 8; nearest: 56 or 64"):
        Trainer(_config(tiny_dataset, tmp_path / "a", size=60))
    with pytest.raises(InputError, match="imgsz 5: .*nearest: 8$"):
        Trainer(_config(tiny_dataset, tmp_path / "a", size=5))
    with pytest.raises(InputError, match="threads -2: expected a whole number >= 1"):
        Trainer(_config(tiny_dataset, tmp_path / "a", threads=-2))
    assert not (tmp_path / "a").exists()
    for option, value in (("--threads", "-2"), ("--epochs", "0"), ("--epochs-this-run", "0")):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--data", str(tiny_dataset), option, value])
        assert exit_info.value.code == 2
        assert f"argument {option}: {value!r}: expected a whole number >= 1" in capsys.readouterr().err


def test_an_empty_validation_set_is_named_before_training(tiny_dataset, tmp_path):
    # --holdout 0 and no --val; then 9 training stems, too few for every 10th to be held out.
    for holdout in (0, 10):
        with pytest.raises(InputError, match=f"no validation samples: without --val .*--holdout {holdout} holds out "
                                             f"none of the 9 training stems.*pass --val"):
            Trainer(_config(tiny_dataset, tmp_path / "run", val=[], holdout=holdout))
    assert Trainer(_config(tiny_dataset, tmp_path / "run", val=[], holdout=3)).val_samples  # 3 of the 9


def test_warm_start_takes_the_weights_but_a_fresh_schedule(tiny_dataset, tmp_path):
    first = _config(tiny_dataset, tmp_path / "first", epochs=1, max_iters_per_epoch=2)
    train(first)
    source = load_checkpoint(tmp_path / "first" / "best.pt").model.state_dict()
    warm = Trainer(_config(tiny_dataset, tmp_path / "warm", epochs=1, init=str(tmp_path / "first" / "best.pt")))
    cold = Trainer(_config(tiny_dataset, tmp_path / "cold", epochs=1, seed=11))
    assert warm.epoch == 0 and warm.iteration == 0 and not warm.optimizer.state  # fresh schedule and optimizer
    for name, value in warm.model.state_dict().items():
        assert torch.equal(value, source[name]), name
    assert not all(torch.equal(v, source[k]) for k, v in cold.model.state_dict().items())
    with pytest.raises(Exception, match="model config"):
        Trainer(_config(tiny_dataset, tmp_path / "other", init=str(tmp_path / "first" / "best.pt"),
                        model_overrides={"asymmetric_kernel": 5}))


def test_ema_weights_are_validated_saved_and_resumed(tiny_dataset, tmp_path):
    one = Trainer(_config(tiny_dataset, tmp_path / "one", epochs=1, ema_decay=0.5))
    one.fit()  # one epoch: it is the best, so best.pt must hold the averaged weights, not the trained ones
    trained, averaged = one.model.state_dict(), one.ema.module.state_dict()
    assert any(not torch.equal(averaged[k], v) for k, v in trained.items() if v.is_floating_point())
    best = load_checkpoint(tmp_path / "one" / "best.pt").model.state_dict()
    for name, value in best.items():
        assert torch.allclose(value.float(), averaged[name].float(), atol=1e-6), name
    assert {"val_raw_iou", "val_iou"} <= set(one.history[0])

    straight = Trainer(_config(tiny_dataset, tmp_path / "straight", ema_decay=0.5))
    straight.fit()
    first = Trainer(_config(tiny_dataset, tmp_path / "split", ema_decay=0.5))
    first.fit(epochs_this_run=1)
    resumed = Trainer(_config(tiny_dataset, tmp_path / "split", ema_decay=0.5))
    resumed.load_state(tmp_path / "split" / "last.pt")
    resumed.fit()
    for name, value in resumed.ema.module.state_dict().items():
        assert torch.allclose(value.float(), straight.ema.module.state_dict()[name].float(), atol=1e-6), name
    with pytest.raises(Exception, match="ema_decay"):
        Trainer(_config(tiny_dataset, tmp_path / "split")).load_state(tmp_path / "split" / "last.pt")
    with pytest.raises(Exception, match="ema_decay"):
        Trainer(_config(tiny_dataset, tmp_path / "bad", ema_decay=1.0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: cuda is not missing here")
def test_a_missing_gpu_is_named_before_any_work(tiny_dataset, tmp_path):
    with pytest.raises(Exception, match="sees no CUDA GPU.*--device cpu"):
        Trainer(_config(tiny_dataset, tmp_path / "gpu", device="cuda"))
    with pytest.raises(Exception, match="expected auto, cpu, cuda"):
        Trainer(_config(tiny_dataset, tmp_path / "bogus", device="gpu0"))
    assert Trainer(_config(tiny_dataset, tmp_path / "auto", device="auto")).device.type == "cpu"

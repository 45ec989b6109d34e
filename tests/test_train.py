"""The real trainer on tiny settings: files, reproducibility, schedulers, regularization, what chooses."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.optim import lr_scheduler as sched

from ablate import rundir
from ablate.config import ConfigError
from ablate.data import load_dataset
from ablate.models import MODELS, build_model
from ablate.run import score
from ablate.train import fit
from fakedata import write_idx

VOLATILE = ["epoch_seconds", "images_per_second"]  # wall-clock columns
EVAL_ROWS = 200  # TINY evaluates one batch of 200 images per split (limit_eval_batches=1, eval_batch_size=200)


def _fit(cfg_factory, tmp_path, *overrides, name="run"):
    run_dir = tmp_path / name
    run_dir.mkdir()
    summary = fit(cfg_factory(*overrides), run_dir, "h")
    return run_dir, summary


def test_run_writes_metrics_summary_and_model(cfg_factory, tmp_path):
    run_dir, s = _fit(cfg_factory, tmp_path)
    epochs = pd.read_csv(run_dir / "epochs.csv")
    assert list(epochs.columns) == rundir.EPOCH_COLUMNS
    assert list(epochs.epoch) == [1, 2]
    for split in ("val", "test", "train_eval"):
        assert epochs[f"{split}_acc"].between(0, 1).all() and (epochs[f"{split}_loss"] > 0).all(), split
    assert (epochs.images_per_second > 0).all()
    steps = pd.read_csv(run_dir / "steps.csv")
    assert list(steps.columns) == rundir.STEP_COLUMNS
    assert list(steps.step) == list(range(1, 9)) and list(steps.epoch) == [1] * 4 + [2] * 4
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 2
    assert summary["final_test_acc"] == pytest.approx(epochs.test_acc.iloc[-1])
    assert summary["best_test_acc"] == pytest.approx(epochs.test_acc.max())
    # The validation split chooses: the best epoch is its best, and that is what a sweeper gets back.
    best = epochs.val_acc.idxmax()
    assert summary["selection"] == "val" and summary["best_epoch"] == epochs.epoch[best]
    assert summary["best_val_acc"] == pytest.approx(epochs.val_acc.max())
    assert summary["test_acc_at_best"] == pytest.approx(epochs.test_acc[best])
    assert summary["final_val_acc"] == pytest.approx(epochs.val_acc.iloc[-1])
    assert summary["final_train_eval_acc"] == pytest.approx(epochs.train_eval_acc.iloc[-1])
    assert score(summary, -1.0) == summary["final_val_acc"]
    assert "scheduler_metric" not in summary  # cosine steps on nothing
    assert summary["params"] == 421_642  # simple_cnn on 1x28x28, 10 classes
    # conv 1->32 at 28x28, conv 32->64 at 14x14 (3x3), dense 3136->128, out 128->10: per image
    assert summary["mult_adds"] == 28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 3136 * 128 + 128 * 10 == 4_241_152
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == summary["params"]


def test_same_seed_gives_identical_epochs(cfg_factory, tmp_path):
    a, _ = _fit(cfg_factory, tmp_path, "augment=tutorial", name="a")
    b, _ = _fit(cfg_factory, tmp_path, "augment=tutorial", name="b")
    c, _ = _fit(cfg_factory, tmp_path, "augment=tutorial", "trainer.seed=1", name="c")
    ea, eb, ec = (pd.read_csv(d / "epochs.csv").drop(columns=VOLATILE) for d in (a, b, c))
    pd.testing.assert_frame_equal(ea, eb)
    assert not ea.train_loss.equals(ec.train_loss)


# On CUDA the step is graphed (trainer.cuda_graph=auto) and the lr lives in a float32 device tensor,
# so the lr really used (and recorded) is the float32 nearest torch's: 1e-3 -> 0.0010000000475.
LR_REL = 1e-6 if torch.cuda.is_available() else 1e-9


def _torch_lrs(make, epochs, steps, base_lr=1e-3, per_step=False, metrics=None):
    """What torch's scheduler gives: the lr in force at the start of each epoch (or step)."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    s = make(opt)
    out = []
    for e in range(epochs):
        for _ in range(steps):
            if per_step:
                out.append(opt.param_groups[0]["lr"])
                opt.step()
                s.step()
        if not per_step:
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step(metrics[e]) if metrics is not None else s.step()
    return out


@pytest.mark.parametrize("name,make", [
    ("none", lambda o: sched.LambdaLR(o, lambda e: 1.0)),
    ("step", lambda o: sched.StepLR(o, step_size=2, gamma=0.1)),
    ("multistep", lambda o: sched.MultiStepLR(o, milestones=[1, 3], gamma=0.5)),
    ("exponential", lambda o: sched.ExponentialLR(o, gamma=0.8)),
    ("cosine", lambda o: sched.CosineAnnealingLR(o, T_max=4, eta_min=1e-5)),
    ("warmup_cosine", lambda o: sched.SequentialLR(o, [sched.LinearLR(o, 0.1, total_iters=2),
                                                       sched.CosineAnnealingLR(o, T_max=2, eta_min=1e-5)], [2])),
])
def test_epoch_scheduler_lr_matches_torch(cfg_factory, tmp_path, name, make):
    extra = {"step": ["scheduler.step_size=2"], "multistep": ["scheduler.milestones=[1,3]", "scheduler.gamma=0.5"]}
    run_dir, _ = _fit(cfg_factory, tmp_path, f"scheduler={name}", "trainer.epochs=4", "trainer.limit_batches=1",
                      *extra.get(name, []))
    got = pd.read_csv(run_dir / "epochs.csv").lr.tolist()
    assert got == pytest.approx(_torch_lrs(make, 4, 1), rel=LR_REL)


def test_cosine_t10_trains_at_its_minimum_in_epoch_11(cfg_factory, tmp_path):
    """The CIFAR tutorial's CosineAnnealingLR(T_max=10), stepped after each epoch (README's claim)."""
    run_dir, _ = _fit(cfg_factory, tmp_path, "scheduler=cosine_t10", "optimizer.lr=1e-3", "trainer.epochs=12",
                      "trainer.limit_batches=1")
    lr = pd.read_csv(run_dir / "epochs.csv").set_index("epoch").lr
    assert lr[11] == pytest.approx(1e-5, rel=LR_REL) and lr[10] > 3e-5 and lr[12] > 3e-5
    assert lr[1] == pytest.approx(1e-3, rel=LR_REL)


def test_plateau_lowers_lr_only_after_patience(cfg_factory, tmp_path):
    # With threshold 0.5 (relative) no epoch after the first counts as an improvement.
    run_dir, _ = _fit(cfg_factory, tmp_path, "scheduler=plateau", "scheduler.patience=2", "scheduler.threshold=0.5",
                      "trainer.epochs=6", "trainer.limit_batches=1")
    ep = pd.read_csv(run_dir / "epochs.csv")
    want = _torch_lrs(lambda o: sched.ReduceLROnPlateau(o, factor=0.5, patience=2, threshold=0.5), 6, 1,
                      metrics=ep.val_loss.tolist())
    assert ep.lr.tolist() == pytest.approx(want, rel=LR_REL)
    assert ep.lr.tolist()[:4] == pytest.approx([1e-3] * 4, rel=LR_REL) and ep.lr.iloc[4] == pytest.approx(5e-4, rel=LR_REL)  # epochs 2-4 bad -> cut after 4


def test_onecycle_moves_per_step(cfg_factory, tmp_path):
    run_dir, _ = _fit(cfg_factory, tmp_path, "scheduler=onecycle", "trainer.epochs=2", "trainer.limit_batches=3")
    steps = pd.read_csv(run_dir / "steps.csv")
    want = _torch_lrs(lambda o: sched.OneCycleLR(o, max_lr=1e-2, epochs=2, steps_per_epoch=3), 2, 3, per_step=True)
    assert steps.lr.tolist() == pytest.approx(want, rel=LR_REL)
    assert len(set(steps.lr)) == 6


def test_l2_and_weight_decay_change_training_differently(cfg_factory, tmp_path):
    base = ["optimizer=sgd", "optimizer.lr=0.05", "trainer.epochs=1"]
    runs = {}
    for name, reg in [("none", ["regularization=none"]), ("l2", ["regularization=l2", "regularization.l2=0.01"]),
                      ("wd", ["regularization=weight_decay", "regularization.weight_decay=0.02"])]:
        d, _ = _fit(cfg_factory, tmp_path, *base, *reg, name=name)
        runs[name] = torch.load(d / "model.pt", weights_only=True)
    norm = {k: sum(v.float().pow(2).sum().item() for n, v in sd.items() if "weight" in n or "bias" in n)
            for k, sd in runs.items()}
    # Both shrink the weights against no regularization ...
    assert norm["l2"] < norm["none"] and norm["wd"] < norm["none"]
    # ... and for plain SGD an explicit l2*sum(w^2) penalty has gradient 2*l2*w: it equals weight_decay=2*l2.
    for k in runs["l2"]:
        torch.testing.assert_close(runs["l2"][k], runs["wd"][k], rtol=1e-4, atol=1e-5)


def test_shipped_l2_as_decay_trains_like_l2_under_plain_sgd(cfg_factory, tmp_path):
    """birds_vs_planes' two regularization arms as shipped (lambda 0.001; weight_decay 0.002), its optimizer."""
    base = ["optimizer=sgd", "optimizer.lr=0.01", "optimizer.momentum=0.0", "trainer.epochs=1"]
    a, sa = _fit(cfg_factory, tmp_path, *base, "regularization=l2", name="l2")
    b, sb = _fit(cfg_factory, tmp_path, *base, "regularization=l2_as_decay", name="decay")
    wa, wb = (torch.load(d / "model.pt", weights_only=True) for d in (a, b))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    assert sa["final_train_loss"] == pytest.approx(sb["final_train_loss"], rel=1e-5)  # the penalty is not in it


def test_l2_is_not_adamw_decay(cfg_factory, tmp_path):
    a, _ = _fit(cfg_factory, tmp_path, "optimizer=adamw", "regularization=l2", "trainer.epochs=1", name="l2")
    b, _ = _fit(cfg_factory, tmp_path, "optimizer=adamw", "regularization=weight_decay",
                "regularization.weight_decay=0.002", "trainer.epochs=1", name="wd")
    sa, sb = (torch.load(d / "model.pt", weights_only=True) for d in (a, b))
    assert any(not torch.allclose(sa[k], sb[k]) for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize("override,key", [("trainer.epochs=0", "trainer.epochs"),
                                          ("trainer.train_eval_size=-1", "trainer.train_eval_size"),
                                          ("dataset.val_size=1.0", "dataset.val_size"),
                                          ("optimizer.lr=-0.1", "optimizer.lr"),
                                          ("augment.hflip=1.5", "augment.hflip")])
def test_bad_values_name_the_key(cfg_factory, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _fit(cfg_factory, tmp_path, override)


def test_plateau_needs_eval_every_epoch(cfg_factory, tmp_path):
    with pytest.raises(ConfigError, match="trainer.eval_every"):
        _fit(cfg_factory, tmp_path, "scheduler=plateau", "trainer.eval_every=2")


# --------------------------------------------------------------------------- which images an epoch trains on
class _Probe(nn.Module):
    """A real (linear) model that also counts, per image id, the training images it is fed in train mode.

    The id is written into pixel (0, 0) of each image; the counts live in a buffer, so they are saved in
    model.pt and rolled back with the weights wherever the trainer rolls state back."""

    def __init__(self, c: int, h: int, w: int, k: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c * h * w, k)
        self.register_buffer("hits", torch.zeros(256, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            ids = (x[:, 0, 0, 0] * 255).round().long()  # dataset mean 0, std 1: x = pixel / 255
            self.hits.index_add_(0, ids, torch.ones_like(ids))
        return self.fc(x.flatten(1))


@dataclass
class _ProbeConf:
    name: str = "probe"


@pytest.fixture
def probe_model():
    MODELS.register("probe", _ProbeConf)(lambda cfg, c, size, k: _Probe(c, *size, k))
    yield OmegaConf.create({"name": "probe"})
    del MODELS.builders["probe"], MODELS.schemas["probe"]


def _id_images(root, n_train: int = 100, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = np.arange(n)
        write_idx(root / "MNIST" / "raw", prefix, x, np.arange(n) % 10)


@pytest.mark.parametrize("pipeline", ["resident", "dataloader"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_drop_last_false_trains_on_every_image_each_epoch(cfg_factory, tmp_path, probe_model, pipeline, drop_last):
    """100 images in batches of 32: 3 full batches and a ragged one of 4, which only drop_last=false trains on."""
    _id_images(tmp_path / "data")
    cfg = cfg_factory("dataset=mnist", "dataset.val_size=0", "dataset.mean=[0.0]", "dataset.std=[1.0]",
                      "augment=none", "optimizer=sgd", "scheduler=none", "trainer.batch_size=32", "trainer.limit_batches=null",
                      "trainer.epochs=3", f"trainer.pipeline={pipeline}", "trainer.num_workers=0",
                      f"trainer.drop_last={str(drop_last).lower()}")
    OmegaConf.set_struct(cfg, False)
    cfg.model = probe_model
    run_dir = tmp_path / "run"
    summary = fit(cfg, run_dir, "h")
    assert summary["status"] == "completed"
    hits = torch.load(run_dir / "model.pt", weights_only=True)["hits"]
    steps, epochs = pd.read_csv(run_dir / "steps.csv"), pd.read_csv(run_dir / "epochs.csv")
    sizes = [32, 32, 32] if drop_last else [32, 32, 32, 4]
    assert steps.groupby("epoch").size().tolist() == [len(sizes)] * 3
    if drop_last:
        assert hits.sum() == 3 * 96 and hits[100:].sum() == 0 and int(hits.max()) <= 3
    else:
        assert hits[:100].tolist() == [3] * 100 and hits[100:].sum() == 0  # every image, once per epoch
    # train_loss is the mean over the epoch's images (steps.csv holds each step's batch mean) ...
    for e, rows in steps.groupby("epoch"):
        want = float(np.dot(rows.loss, sizes)) / sum(sizes)
        assert epochs.train_loss[e - 1] == pytest.approx(want, rel=1e-6)
    # ... and train_acc a whole number of them.
    seen = epochs.train_acc * sum(sizes)
    assert np.allclose(seen, seen.round(), atol=1e-6)


def test_a_batch_larger_than_the_training_split_is_refused_with_drop_last(cfg_factory):
    """The embedded set trains on 5,400 images (600 held out): with drop_last a batch of 5,401 never fills, so
    every image would be dropped. validate() refuses it, so the dry run does too."""
    from ablate.compose import validate

    validate(cfg_factory("trainer.batch_size=5400"))
    with pytest.raises(ConfigError) as e:
        validate(cfg_factory("trainer.batch_size=5401"))
    assert str(e.value) == ("trainer.batch_size=5401 is invalid: exceeds the 5,400-image training split, which "
                            "trainer.drop_last=true would drop whole; use at most 5400, or trainer.drop_last=false "
                            "to train on the whole split each step")
    validate(cfg_factory("trainer.batch_size=6000", "dataset.val_size=0"))  # nothing held out
    validate(cfg_factory("trainer.batch_size=100000", "trainer.drop_last=false"))  # trains, and says so (below)


@pytest.mark.parametrize("pipeline", ["resident", "dataloader"])
def test_a_batch_larger_than_the_split_trains_on_the_whole_split_and_says_so(cfg_factory, tmp_path, probe_model,
                                                                              pipeline, caplog):
    """drop_last=false: every step is the whole split of 100 images (every image once per epoch), and the run
    starts with one warning saying so; drop_last=true is refused before anything is loaded."""
    _id_images(tmp_path / "data")
    over = ["dataset=mnist", "dataset.val_size=0", "dataset.mean=[0.0]", "dataset.std=[1.0]", "augment=none",
            "optimizer=sgd", "scheduler=none", "trainer.batch_size=1000", "trainer.limit_batches=null",
            "trainer.epochs=2", f"trainer.pipeline={pipeline}", "trainer.num_workers=0"]
    with pytest.raises(ConfigError, match=r"^trainer\.batch_size=1000 is invalid: exceeds the 100-image training split"):
        fit(cfg_factory(*over), tmp_path / "dropped", "h")
    caplog.set_level(logging.INFO, logger="ablate")
    cfg = cfg_factory(*over, "trainer.drop_last=false")
    OmegaConf.set_struct(cfg, False)
    cfg.model = probe_model
    summary = fit(cfg, tmp_path / "run", "h")
    assert summary["status"] == "completed"
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["hits"][:101].tolist() == [2] * 100 + [0]
    assert pd.read_csv(tmp_path / "run" / "steps.csv").epoch.tolist() == [1, 2]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "run: trainer.batch_size=1000 exceeds the 100-image training split: every step trains on the whole split, "
        "one step per epoch"]


# --------------------------------------------------------------------------- what chooses, what is measured
def test_plateau_steps_on_the_validation_loss_not_the_test_loss(cfg_factory, tmp_path):
    # Calibrate: a constant lr trains epochs 1-2 exactly as plateau does (nothing changes before its first cut).
    ref, _ = _fit(cfg_factory, tmp_path, "scheduler=none", "trainer.epochs=2", "trainer.limit_batches=1", name="ref")
    ep = pd.read_csv(ref / "epochs.csv")
    gain = {s: 1 - ep[f"{s}_loss"][1] / ep[f"{s}_loss"][0] for s in ("val", "test")}  # epoch 2's relative gain
    assert min(gain.values()) > 0 and abs(gain["val"] - gain["test"]) > 1e-3, gain
    # A threshold between the two gains: epoch 2 improved on one split and not on the other.
    run_dir, s = _fit(cfg_factory, tmp_path, "scheduler=plateau", "scheduler.patience=0", "trainer.epochs=3",
                      f"scheduler.threshold={(gain['val'] + gain['test']) / 2}", "trainer.limit_batches=1")
    lr = pd.read_csv(run_dir / "epochs.csv").lr.tolist()
    assert lr[:2] == pytest.approx([1e-3, 1e-3], rel=LR_REL)
    assert lr[2] == pytest.approx(1e-3 if gain["val"] > gain["test"] else 5e-4, rel=LR_REL)  # the val split's call
    assert s["scheduler_metric"] == "val_loss"


def test_without_a_validation_split_the_test_split_chooses_and_the_run_says_so(cfg_factory, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ablate")
    run_dir, s = _fit(cfg_factory, tmp_path, "dataset.val_size=0", "trainer.train_eval_size=0", "scheduler=plateau",
                      "scheduler.patience=0", "scheduler.threshold=0.5", "trainer.epochs=3", "trainer.limit_batches=1")
    ep = pd.read_csv(run_dir / "epochs.csv")
    assert ep[["val_loss", "val_acc", "train_eval_loss", "train_eval_acc"]].isna().all().all()  # empty cells
    want = _torch_lrs(lambda o: sched.ReduceLROnPlateau(o, factor=0.5, patience=0, threshold=0.5), 3, 1,
                      metrics=ep.test_loss.tolist())
    assert ep.lr.tolist() == pytest.approx(want, rel=LR_REL) and want[2] < want[1]  # cut after epoch 2
    assert s["selection"] == "test" and s["scheduler_metric"] == "test_loss"
    assert s["final_val_acc"] is None and s["best_val_acc"] is None and s["final_train_eval_acc"] is None
    assert s["best_epoch"] == ep.epoch[ep.test_acc.idxmax()] and s["test_acc_at_best"] == ep.test_acc.max()
    assert score(s, -1.0) == s["final_test_acc"]
    assert not (run_dir / rundir.BEST).exists()
    assert "no validation split (dataset.val_size=0)" in caplog.text
    assert "the scheduler steps on test_loss" in caplog.text


def _scored(cfg, weights: Path) -> dict[str, tuple[float, float]]:
    """Loss and accuracy of saved weights, computed here from scratch: eval mode, normalised pixels, nothing else."""
    data = load_dataset(cfg.dataset, cfg.data)
    model = build_model(cfg.model, data.channels, data.image_size, data.num_classes)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (data.mean, data.std))
    out = {}
    for split, (x, y) in {"val": (data.val_x, data.val_y), "train_eval": data.train_subset(EVAL_ROWS)}.items():
        with torch.no_grad():
            logits = model((x[:EVAL_ROWS].float() / 255 - mean) / std)
        y = y[:EVAL_ROWS]
        out[split] = F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()
    return out


def test_val_and_train_eval_score_the_model_in_eval_mode_without_augmentation(cfg_factory, tmp_path):
    # Strong augmentation and simple_cnn's dropout 0.5: a pass in train mode or with augmentation would differ.
    over = ("augment=strong", f"trainer.train_eval_size={EVAL_ROWS}", "trainer.epochs=1")
    run_dir, s = _fit(cfg_factory, tmp_path, *over)
    last = pd.read_csv(run_dir / "epochs.csv").iloc[-1]
    got = _scored(cfg_factory(*over), run_dir / rundir.MODEL)
    for split in ("val", "train_eval"):
        assert (last[f"{split}_loss"], last[f"{split}_acc"]) == pytest.approx(got[split], rel=1e-5), split
    assert last.train_eval_acc != last.train_acc  # the running train-mode accuracy is another number


def test_best_pt_is_the_validation_best_epoch_and_survives_a_crash_and_resume(cfg_factory, tmp_path, monkeypatch,
                                                                              caplog):
    # Epoch 4 trains at lr 1 (x1000 after 3 epochs): it wrecks the model, so the best epoch comes before it.
    over = ("scheduler=step", "scheduler.step_size=3", "scheduler.gamma=1000", "trainer.epochs=4")
    ref, s = _fit(cfg_factory, tmp_path, *over, name="ref")
    ep = pd.read_csv(ref / "epochs.csv")
    best = ep.val_acc.idxmax()
    assert s["best_epoch"] == ep.epoch[best] < 4 and s["best_val_acc"] == ep.val_acc[best]
    assert _scored(cfg_factory(*over), ref / rundir.BEST)["val"][1] == pytest.approx(ep.val_acc[best])

    # The same run, crashed while writing epoch 4's row (after epoch 3's checkpoint), then resumed.
    real = rundir.append_rows

    def crash_in_epoch_4(path, columns, rows):
        if Path(path).name == rundir.EPOCHS_CSV and rows[0]["epoch"] == 4:
            raise RuntimeError("killed")
        real(path, columns, rows)

    monkeypatch.setattr(rundir, "append_rows", crash_in_epoch_4)
    run_dir = tmp_path / "crashed"
    run_dir.mkdir()
    with pytest.raises(RuntimeError, match="killed"):
        fit(cfg_factory(*over), run_dir, "h")
    monkeypatch.setattr(rundir, "append_rows", real)
    # A best.pt the checkpoint does not vouch for (a killed attempt's, of an epoch the resume cuts back).
    stale = torch.load(run_dir / rundir.BEST, weights_only=True)
    torch.save({k: torch.zeros_like(v) for k, v in stale.items()}, run_dir / rundir.BEST)
    caplog.set_level(logging.INFO, logger="ablate")
    resumed = fit(cfg_factory(*over), run_dir, "h")
    assert "resuming crashed after epoch 3/4" in caplog.text
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "epochs.csv").drop(columns=VOLATILE), ep.drop(columns=VOLATILE))
    for key in ("best_epoch", "best_val_acc", "test_acc_at_best", "final_val_acc"):
        assert resumed[key] == s[key], key
    a, b = (torch.load(d / rundir.BEST, weights_only=True) for d in (run_dir, ref))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)

"""The speed machinery on CPU: graph capture logic, the DataLoader twin, no CUDA in the launcher, GPU spread.

The CUDA calls themselves run on the GPU machine (``python -m ablate.bench``);
here :class:`ablate.cudagraph.EmulatedGraphs` stands in for capture and replay so
that the bookkeeping around them (static inputs, tensor lr, undone warm-up,
fallback) is checked against eager training.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ablate import cudagraph as graph
from ablate.augment import AugmentConf, BatchAugment
from ablate.config import typed
from ablate.data import load_dataset
from ablate.models import build_model
from ablate.optim import build_optimizer, build_scheduler
from ablate.batches import ResidentBatches
from ablate.device import seed_everything
from ablate.train import fit
from conftest import ROOT, run_cli


def _setup(cfg, optimizer: str, n: int = 512, drop_last: bool = True):
    seed_everything(0)
    data = load_dataset(cfg.dataset, cfg.data)
    model = build_model(cfg.model, data.channels, data.image_size, data.num_classes)
    aug = BatchAugment(typed(cfg.augment, AugmentConf), data.mean, data.std)
    batches = ResidentBatches(data.train_x[:n], data.train_y[:n], 32, aug, torch.device("cpu"),
                              drop_last=drop_last)
    opt = build_optimizer(cfg.optimizer, model.parameters(), 0.0)
    sched = build_scheduler(cfg.scheduler, opt, 2, batches.steps).scheduler

    def body(idx):
        x, y = batches.gather(idx)
        out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach(), (out.argmax(1) == y).sum()
    return model, opt, sched, batches, body


def _train(cfg, optimizer: str, graphs=None, steps: int = 12):
    model, opt, sched, batches, body = _setup(cfg, optimizer)
    step = graph.GraphStep(body, model, opt, torch.device("cpu"), graphs=graphs) if graphs else None
    losses = []
    for i, idx in enumerate(batches.indices()):
        if i == steps:
            break
        loss, _ = step(idx) if step else body(idx)
        losses.append(float(loss))
        sched.step()
    return losses, [p.detach().clone() for p in model.parameters()], step


@pytest.mark.parametrize("optimizer,scheduler", [("sgd", "onecycle"), ("adam", "cosine"), ("rmsprop", "step")])
def test_graph_step_trains_like_eager(cfg_factory, optimizer, scheduler):
    """Warm-up undone, indices copied into the static buffer, lr read from its tensor at every replay."""
    cfg = cfg_factory(f"optimizer={optimizer}", f"scheduler={scheduler}", "augment=flip_crop", "model=lenet")
    eager_losses, eager_params, _ = _train(cfg, optimizer)
    graph_losses, graph_params, step = _train(cfg, optimizer, graphs=graph.EmulatedGraphs())
    assert step.replay is not None and not step.eager
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    for a, b in zip(eager_params, graph_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert len(set(eager_losses)) > 1  # it really trained


class _CountsReplays(graph.EmulatedGraphs):
    replays = 0

    def capture(self, fn):
        out, replay = super().capture(fn)

        def counted():
            self.replays += 1
            replay()
        return out, counted


def test_ragged_last_batch_runs_eagerly_between_replays(cfg_factory):
    """drop_last=false: 500 images = 15 batches of 32 + 20; the graph replays the full batches, the ragged
    one runs eagerly on the same weights and optimizer state, and the whole matches eager training."""
    cfg = cfg_factory("optimizer=adam", "scheduler=onecycle", "model=lenet")
    runs = {}
    for mode in ("eager", "graph"):
        model, opt, sched, batches, body = _setup(cfg, "adam", n=500, drop_last=False)
        graphs = _CountsReplays()
        step = graph.GraphStep(body, model, opt, torch.device("cpu"), graphs=graphs) if mode == "graph" else body
        losses = []
        for _ in range(2):
            for idx in batches.indices():
                losses.append(float(step(idx)[0]))
                sched.step()
        runs[mode] = losses, [p.detach().clone() for p in model.parameters()], graphs.replays
    assert batches.sizes == [32] * 15 + [20]
    assert len(runs["graph"][0]) == 32 and runs["graph"][2] == 30  # 2 epochs x 15 full batches replayed
    assert runs["graph"][0] == pytest.approx(runs["eager"][0], rel=1e-5, abs=1e-6)
    for a, b in zip(runs["eager"][1], runs["graph"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


class _Refuses(graph.EmulatedGraphs):
    def capture(self, fn):
        fn()  # a partial capture that ran the step once must be undone too
        raise RuntimeError("operation not permitted when stream is capturing")


def test_graph_capture_failure_falls_back_to_eager_with_the_reason(cfg_factory, caplog):
    cfg = cfg_factory("optimizer=sgd", "scheduler=step", "model=lenet")
    eager_losses, eager_params, _ = _train(cfg, "sgd")
    with caplog.at_level(logging.WARNING, logger="ablate"):
        losses, params, step = _train(cfg, "sgd", graphs=_Refuses())
    assert step.eager
    assert "capture failed (RuntimeError: operation not permitted when stream is capturing): running eager" in caplog.text
    assert losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    for a, b in zip(eager_params, params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cuda_graph_on_cpu_runs_eager_and_says_why(cfg_factory, tmp_path, caplog):
    runs = {}
    for name, extra in (("eager", []), ("graph", ["trainer.cuda_graph=true"])):
        (tmp_path / name).mkdir()
        with caplog.at_level(logging.WARNING, logger="ablate"):
            s = fit(cfg_factory("trainer.device=cpu", *extra), tmp_path / name, "h")
        assert s["step_mode"] == "eager"
        runs[name] = pd.read_csv(tmp_path / name / "epochs.csv")
    assert "cuda_graph requested but device is cpu: running eager" in caplog.text
    cols = ["lr", "train_loss", "train_acc", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(runs["eager"][cols], runs["graph"][cols])


def test_cuda_graph_is_a_speed_option_not_part_of_a_runs_identity(cfg_factory):
    from ablate.identity import config_hash

    base = config_hash(cfg_factory())
    assert config_hash(cfg_factory("trainer.cuda_graph=true")) == base
    assert config_hash(cfg_factory("trainer.cuda_graph=false", "trainer.num_workers=0")) == base
    assert config_hash(cfg_factory("optimizer.lr=0.5")) != base
    with pytest.raises(Exception, match="trainer.cuda_graph"):
        fit(cfg_factory("trainer.cuda_graph=sometimes"), ROOT / "never-written", "h")


def test_lr_tensor_is_updated_in_place_by_every_scheduler_kind(cfg_factory):
    """The graph reads the lr tensor's memory: schedulers must fill it, not replace it."""
    for name in ("step", "cosine", "plateau", "onecycle", "warmup_cosine"):
        cfg = cfg_factory(f"scheduler={name}", "optimizer=adam")
        p = torch.nn.Parameter(torch.zeros(2))
        opt = build_optimizer(cfg.optimizer, [p], 0.0)
        schedule = build_scheduler(cfg.scheduler, opt, 12, 5)
        sched, interval = schedule.scheduler, schedule.interval
        graph.lr_to_tensor(opt, torch.device("cpu"))
        lr = opt.param_groups[0]["lr"]
        seen = [float(lr)]
        for _ in range(12 if interval == "epoch" else 60):
            opt.step()
            sched.step(1.0) if name == "plateau" else sched.step()
            assert opt.param_groups[0]["lr"] is lr, name
            seen.append(float(lr))
        assert len(set(seen)) > 1, (name, seen)


def test_pipelines_reach_the_same_accuracy(cfg_factory, tmp_path):
    """Same recipe, resident vs DataLoader: different random draws, same distribution, same result."""
    acc = {}
    for pipe in ("resident", "dataloader"):
        (tmp_path / pipe).mkdir()
        s = fit(cfg_factory(f"trainer.pipeline={pipe}", "trainer.num_workers=0", "trainer.epochs=2",
                            "trainer.limit_batches=null", "trainer.limit_eval_batches=null", "trainer.batch_size=128",
                            "model=tinynet", "augment=flip_crop", "optimizer=adam"), tmp_path / pipe, "h")
        acc[pipe] = s["final_test_acc"]
    assert min(acc.values()) > 0.5, acc  # chance is 0.1
    assert abs(acc["resident"] - acc["dataloader"]) < 0.03, acc


def test_dataloader_pipeline_is_seeded(cfg_factory, tmp_path):
    """The same seed draws the same batches and augmentations again; the shuffle order does not depend on
    the number of workers (augmentation draws do: each worker has its own seeded RNG, as torch seeds them)."""
    def losses(name, workers, augment):
        (tmp_path / name).mkdir()
        fit(cfg_factory("trainer.pipeline=dataloader", f"trainer.num_workers={workers}", f"augment={augment}"),
            tmp_path / name, "h")
        return pd.read_csv(tmp_path / name / "steps.csv")[["step", "loss"]]

    pd.testing.assert_frame_equal(losses("a", 2, "flip_crop"), losses("b", 2, "flip_crop"))
    pd.testing.assert_frame_equal(losses("c", 0, "none"), losses("d", 2, "none"))


def _path() -> str:
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


_NO_CUDA = """
import torch, torch.cuda
def refuse(*a, **k):
    raise SystemExit("CUDA initialised in the launching process")
torch.cuda._lazy_init = refuse
torch.cuda.init = refuse
import ablate.run, ablate.report, ablate.callbacks, ablate.bench
cfg = ablate.bench.compose(["scheduler=plateau", "model=cnn3", "hydra/launcher=joblib"])
assert cfg.trainer.device == "auto"
print("ok", torch.cuda.is_initialized())
"""


def test_launching_process_does_not_initialise_cuda():
    """joblib forks/spawns jobs from the process that composed the sweep: it must not hold a CUDA context."""
    p = subprocess.run([sys.executable, "-c", _NO_CUDA], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=_path()))
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "ok False"


_TWO_GPUS = """
import runpy, sys, torch
torch.cuda.device_count = lambda: 2  # what a 2-GPU machine reports; CUDA itself stays unavailable here
sys.argv = ["ablate.run"] + sys.argv[1:]
runpy.run_module("ablate.run", run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="pretends a CPU-only machine has two GPUs")
def test_multirun_jobs_are_spread_over_gpus_round_robin(tmp_path):
    """Job N asks for cuda:(N mod 2). With no CUDA here each run then fails with the device it was given
    (and the sweep exits 1 for them)."""
    sweep = tmp_path / "sweep"
    e = dict(os.environ, PYTHONPATH=_path(), MPLBACKEND="Agg")
    p = subprocess.run([sys.executable, "-c", _TWO_GPUS, "-m", "trainer.seed=0,1,2", "trainer.epochs=1",
                        f"hydra.sweep.dir={sweep}"],
                       cwd=tmp_path, env=e, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("ablate: 3 of 3 runs failed ("), (
        p.stderr[-2000:])
    import json
    errors = {json.loads(f.read_text())["config"]["trainer"]["seed"]: json.loads(f.read_text())["error"]
              for f in sweep.glob("*/summary.json")}
    assert set(errors) == {0, 1, 2}
    for seed, gpu in ((0, 0), (1, 1), (2, 0)):
        assert f"trainer.device='cuda:{gpu}' is invalid" in errors[seed], errors[seed]


@pytest.mark.slow
def test_bench_smoke_runs_every_mode(tmp_path):
    p = subprocess.run([sys.executable, "-m", "ablate.bench", "--smoke", "--concurrent", "2", "--out", str(tmp_path),
                        "--sweep-dir", str(tmp_path / "grid")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=_path(), MPLBACKEND="Agg"))
    assert p.returncode == 0, p.stderr[-2000:]
    pipes = pd.read_csv(tmp_path / "pipelines.csv")
    expected = ["resident", "resident+cuda_graph", "dataloader"] if torch.cuda.is_available() else ["resident", "dataloader"]
    assert list(pipes.pipeline) == expected and (pipes.images_per_second > 0).all()
    assert pipes.vs_dataloader.iloc[-1] == pytest.approx(1.0)
    conc = pd.read_csv(tmp_path / "concurrent.csv")
    assert list(conc.processes) == [2] and conc.aggregate_images_per_second.iloc[0] > 0
    assert 0 < conc.wall_images_per_second.iloc[0] <= conc.aggregate_images_per_second.iloc[0] * 1.5
    g = pd.read_csv(tmp_path / "grid.csv")
    assert g.completed.iloc[0] == g.runs.iloc[0] == 2 and bool(g.report.iloc[0])
    assert 0 < g.report_seconds.iloc[0] < g.wall_seconds.iloc[0]  # the report timed alone, a part of the sweep's time
    # trainer.pipeline is not part of a run's identity: one sweep per value, one merged report comparing them
    merged = pd.read_csv(tmp_path / "grid" / "report" / "summary.csv")
    assert sorted(merged["trainer.pipeline"]) == ["dataloader", "resident"]


@pytest.mark.slow
def test_dataloader_workers_start_inside_joblib_jobs(tmp_path):
    """loky changes multiprocessing's default context in its job processes; DataLoader workers must still start."""
    sweep = tmp_path / "sweep"
    p = run_cli(["-m", "trainer.pipeline=dataloader", "trainer.num_workers=2", "trainer.seed=0,1", "trainer.epochs=1",
                 "trainer.limit_batches=3", "trainer.limit_eval_batches=1", "model=lenet", "hydra/launcher=joblib",
                 "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", "report.arm_panels=false"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    import json
    summaries = [json.loads(f.read_text()) for f in sweep.glob("*/summary.json")]
    assert [s["status"] for s in summaries] == ["completed"] * 2, [s.get("error") for s in summaries]


def test_bench_bad_option_is_one_line():
    p = subprocess.run([sys.executable, "-m", "ablate.bench", "--dataset", "nosuch", "--no-cuda-graph"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=_path()))
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()
    assert last == ["ablate.bench: In 'config': Could not find 'dataset/nosuch' Available options in 'dataset': "
                    "cifar10 cifar2 fashion_mnist fashion_mnist_mini mnist"], p.stderr[-1000:]

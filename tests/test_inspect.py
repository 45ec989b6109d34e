"""ablate.inspect: the tutorial's LeNet table, parameter counts, feature maps, Grad-CAM, confusion matrix, CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from ablate.compose import compose
from omegaconf import OmegaConf
from torch import nn

from ablate import inspect as ins
from ablate.config import InspectConf
from ablate.data import dataset_shape
from ablate.inspect.cli import main as inspect_main
from ablate.models import SimpleCNNConf, build_model, count_mult_adds, count_parameters, last_conv
from ablate.train import fit
from conftest import ROOT, make_cfg

MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (ROOT / "conf" / "dataset").glob("*.yaml"))


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "ablate.inspect", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


# ----------------------------------------------------------------------------- layer table
LENET_FASHION = [  # d2l's "output shape" loop for LeNet on a 1x28x28 Fashion-MNIST image
    ("conv1", "Conv2d", (6, 28, 28), 156, 6 * 28 * 28 * 25),
    ("sigmoid1", "Sigmoid", (6, 28, 28), 0, 0),
    ("pool1", "AvgPool2d", (6, 14, 14), 0, 0),
    ("conv2", "Conv2d", (16, 10, 10), 2416, 16 * 10 * 10 * 6 * 25),
    ("sigmoid2", "Sigmoid", (16, 10, 10), 0, 0),
    ("pool2", "AvgPool2d", (16, 5, 5), 0, 0),
    ("flatten", "Flatten", (400,), 0, 0),
    ("fc1", "Linear", (120,), 48120, 400 * 120),
    ("sigmoid3", "Sigmoid", (120,), 0, 0),
    ("fc2", "Linear", (84,), 10164, 120 * 84),
    ("sigmoid4", "Sigmoid", (84,), 0, 0),
    ("out", "Linear", (10,), 850, 84 * 10),
]


def test_lenet_table_is_the_tutorials():
    cfg = compose(["model=lenet", "dataset=fashion_mnist"], "inspect")
    assert dataset_shape(cfg.dataset) == (1, 28, 28, 10)
    model = build_model(cfg.model, 1, (28, 28), 10)
    df = ins.layer_table(model, (1, 28, 28))
    assert list(zip(df.layer, df.type, df.output_shape, df.params, df.mult_adds)) == LENET_FASHION
    assert df.params.sum() == count_parameters(model) == 61_706
    assert df.mult_adds.sum() == 416_520
    text = ins.model_report(cfg)
    for name, kind, shape, params, _ in LENET_FASHION:
        assert f"{name} " in text and kind in text and "x".join(map(str, shape)) in text
    assert "parameters: 61,706 total, 61,706 trainable" in text
    assert "forward: 416,520 multiply-adds" in text


def test_table_counts_match_every_model_on_every_dataset():
    assert {"lenet", "simple_cnn", "cnn3", "tinynet"} <= set(MODELS)
    assert {"fashion_mnist", "fashion_mnist_mini", "mnist", "cifar10", "cifar2"} <= set(DATASETS)
    for m in MODELS:
        for d in DATASETS:
            cfg = compose([f"model={m}", f"dataset={d}"], "inspect")
            c, h, w, k = dataset_shape(cfg.dataset)
            model = build_model(cfg.model, c, (h, w), k)
            df = ins.layer_table(model, (c, h, w))
            where = f"model={m} dataset={d}"
            assert df.params.sum() == count_parameters(model), where
            assert df.trainable.sum() == count_parameters(model, trainable_only=True), where
            assert df.output_shape.iloc[-1] == (k,), where
            assert (df.mult_adds >= 0).all() and df.mult_adds.sum() > 0, where
            assert df.mult_adds.sum() == count_mult_adds(model, (c, h, w)), where  # what summary.json records
            # the table's shapes are what the layers really output (a block's: its last leaf's)
            x = torch.zeros(1, c, h, w)
            model.eval()
            for name, layer in model.named_children():
                x = layer(x)
                shape = df.output_shape[(df.layer == name) | df.layer.str.startswith(name + ".")].iloc[-1]
                assert tuple(x.shape[1:]) == shape, f"{where} {name}"
    assert dataset_shape({"source": "cifar10", "classes": [0, 2]}) == (3, 32, 32, 2)


def test_layer_table_restores_training_mode_and_counts_frozen_params():
    model = build_model(SimpleCNNConf(), 1, (28, 28), 10)
    model.conv1.weight.requires_grad_(False)
    model.train()
    df = ins.layer_table(model, (1, 28, 28))
    assert model.training
    assert df.params.sum() == count_parameters(model)
    assert df.trainable.sum() == count_parameters(model, trainable_only=True) == count_parameters(model) - 288


# ----------------------------------------------------------------------------- Grad-CAM
def _blob_images(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1x16x16 noise; class 1 adds a bright 4x4 square in a random quadrant (class 0: noise only).

    Returns images, labels and each image's evidence region (the square's quadrant).
    The class is carried by the square's presence, not its position, so the
    evidence has one sign wherever it is: what Grad-CAM's channel weights assume."""
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3
    quad = torch.randint(0, 4, (n,), generator=g)
    pos = torch.randint(0, 5, (n, 2), generator=g)
    region = torch.zeros(n, 16, 16, dtype=torch.bool)
    for i in range(n):
        qr, qc = 8 * (int(quad[i]) // 2), 8 * (int(quad[i]) % 2)
        region[i, qr:qr + 8, qc:qc + 8] = True
        if y[i] == 1:
            r, c = qr + int(pos[i, 0]), qc + int(pos[i, 1])
            x[i, 0, r:r + 4, c:c + 4] = 1.0
    return x, y, region


def test_gradcam_puts_the_mass_on_the_evidence():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train, _ = _blob_images(1024, g)
    x_test, y_test, region = _blob_images(96, g)
    model = build_model(SimpleCNNConf(conv_channels=[8, 16], dense=[32], dropout=0.0), 1, (16, 16), 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(400):  # until it is right on every test image
        idx = torch.randint(0, len(x_train), (64,), generator=g)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 19:
            with torch.no_grad():
                if (model(x_test).argmax(1) == y_test).all():
                    break
    model.eval()
    with torch.no_grad():
        assert (model(x_test).argmax(1) == y_test).all()

    pos = y_test == 1
    grads_before = [p.grad.clone() for p in model.parameters()]
    cam = ins.gradcam(model, x_test[pos], 1)  # hooks on the last conv layer by default
    assert cam.shape == (int(pos.sum()), 16, 16)
    assert cam.min() >= 0 and torch.allclose(cam.flatten(1).max(1).values, torch.ones(len(cam)))
    assert all(torch.equal(a, p.grad) for a, p in zip(grads_before, model.parameters()))  # .grad untouched
    mass = (cam * region[pos]).flatten(1).sum(1) / cam.flatten(1).sum(1)
    assert mass.mean() > 0.8, mass
    assert (mass > 0.5).all(), mass  # most of every map's mass is in the square's quadrant (chance: 1/4)
    peak = cam.flatten(1).argmax(1)
    assert region[pos].flatten(1).gather(1, peak[:, None]).all()
    # the same by layer name, with per-image targets
    assert torch.allclose(ins.gradcam(model, x_test[pos], y_test[pos], "conv2"), cam)


def test_gradcam_equals_cam_for_a_global_average_pooling_net():
    """With conv -> GAP -> linear, Grad-CAM is exactly CAM: ReLU(sum_k W[c, k] A_k)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 4, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(2, 3, 8, 8)
    a = model[:3](x)
    for c in range(3):
        cam = F.relu(torch.einsum("k,bkhw->bhw", model[5].weight[c], a)).detach()
        cam = cam / cam.flatten(1).max(1).values[:, None, None]
        assert torch.allclose(ins.gradcam(model, x, c), cam, atol=1e-6)
    assert ins.get_layer(model, None) == ("2", model[2])
    with pytest.raises(ins.InspectError, match="not in the model"):
        ins.gradcam(model, x, 0, "conv9")


# ----------------------------------------------------------------------------- a trained run
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real LeNet run on the embedded data set: ``.hydra/config.yaml`` + ``model.pt``."""
    tmp = tmp_path_factory.mktemp("inspect")
    cfg = make_cfg(["model=lenet", "dataset=fashion_mnist_mini", "trainer.epochs=1", "trainer.limit_batches=2",
                    "trainer.batch_size=32", "trainer.device=cpu", "trainer.eval_batch_size=500",
                    f"data.root={tmp / 'data'}"], tiny=False)
    run = tmp / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml", resolve=True)
    assert fit(cfg, run, "h")["status"] == "completed"
    return run


def test_feature_map_shapes(run_dir):
    run = ins.load_run(run_dir)
    assert not run.model.training
    from ablate.augment import normalize

    x = normalize(run.data.test_x[:3], run.data.mean, run.data.std)
    maps = ins.feature_maps(run.model, x)
    assert {k: tuple(v.shape) for k, v in maps.items()} == {"conv1": (3, 6, 28, 28), "conv2": (3, 16, 10, 10)}
    maps = ins.feature_maps(run.model, x, ["pool2", "flatten"])
    assert tuple(maps["pool2"].shape) == (3, 16, 5, 5) and tuple(maps["flatten"].shape) == (3, 400)
    assert last_conv(run.model) is run.model.conv2


def test_feature_grid_tiles_the_input_and_each_map_on_its_own_range():
    from matplotlib import colormaps

    from ablate.inspect.plots import GRID_PADDING, feature_grid

    images = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    maps = torch.randn(2, 3, 2, 2) * torch.tensor([1.0, 100.0, 0.01]).view(1, 3, 1, 1)
    grid = feature_grid(images, maps, channels=2)  # 2 rows x (input + 2 channels), the third channel left out
    t = 4 + GRID_PADDING
    assert grid.shape == (3, 2 * t + GRID_PADDING, 3 * t + GRID_PADDING)

    def tile(row: int, col: int) -> torch.Tensor:
        top, left = GRID_PADDING + row * t, GRID_PADDING + col * t
        return grid[:, top:top + 4, left:left + 4]

    torch.testing.assert_close(tile(1, 0), (images[1].float() / 255).expand(3, 4, 4))
    for row, ch in ((0, 0), (1, 1)):  # every map spans the whole colour scale, whatever its magnitude
        m = np.kron(maps[row, ch].numpy(), np.ones((2, 2)))  # nearest upsampling to the input's 4x4
        want = colormaps["viridis"]((m - m.min()) / (m.max() - m.min()))[..., :3]
        torch.testing.assert_close(tile(row, ch + 1), torch.from_numpy(want).float().permute(2, 0, 1))
    assert (grid[:, :GRID_PADDING] == 1).all()  # white gaps between tiles


def test_drawing_leaves_the_matplotlib_backend_alone(tmp_path):
    code = f"""
import matplotlib, sys, torch
matplotlib.use("svg")  # what a notebook has chosen
import ablate.inspect as ins
ins.plot_feature_maps(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.rand(2, 3, 4, 4), ["a", "b"], "conv1",
                      __import__("pathlib").Path({str(tmp_path / "maps.png")!r}))
ins.confusion_figure(__import__("numpy").eye(3), ["x", "y", "z"], __import__("pathlib").Path({str(tmp_path / "cm.png")!r}))
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MPLBACKEND", None)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["svg", "False"]
    assert (tmp_path / "maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "cm.png").stat().st_size


def test_inspect_run_writes_named_files_and_a_full_confusion(run_dir, tmp_path):
    written = ins.inspect_run(run_dir, tmp_path / "out", InspectConf(images=3, channels=4))
    assert {k: p.name for k, p in written.items()} == {
        "feature_maps_conv1": "feature_maps_conv1.png", "feature_maps_conv2": "feature_maps_conv2.png",
        "gradcam": "gradcam.png", "confusion": "confusion.png", "confusion_csv": "confusion.csv",
        "layers": "layers.txt"}
    for p in written.values():
        assert p.parent == tmp_path / "out" and p.stat().st_size > 0
    cm = pd.read_csv(written["confusion_csv"], index_col=0)
    run = ins.load_run(run_dir)
    assert cm.shape == (10, 10) and list(cm.columns) == run.data.classes
    assert cm.to_numpy().sum() == len(run.data.test_y) == 1000
    assert (cm.to_numpy().sum(1) == np.bincount(run.data.test_y.numpy(), minlength=10)).all()
    summary_acc = __import__("json").loads((run_dir / "summary.json").read_text())["final_test_acc"]
    assert np.trace(cm.to_numpy()) / 1000 == pytest.approx(summary_acc)  # the trainer's own test accuracy
    assert "61,706 total" in written["layers"].read_text()


def test_confusion_matrix_counts():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(37, 1, 2, 2)
    y = torch.randint(0, 3, (37,))
    cm = ins.confusion_matrix(model, x, y, 3, batch_size=8)
    pred = model(x).argmax(1)
    assert cm.sum() == 37 and cm.shape == (3, 3)
    assert all(cm[t, p] == int(((y == t) & (pred == p)).sum()) for t in range(3) for p in range(3))


def test_fixed_indices_take_each_class_in_turn():
    y = torch.tensor([2, 2, 0, 1, 0, 2, 1])
    assert ins.fixed_indices(y, 5) == [2, 3, 0, 4, 6]
    assert ins.fixed_indices(y, 100) == [2, 3, 0, 4, 6, 1, 5]


def test_arm_panels_same_images_for_two_arms(run_dir, tmp_path):
    best = ins.arm_panels(run_dir, tmp_path, [0, 5, 9], prefix="best_", title="best arm")
    worst = ins.arm_panels(run_dir, tmp_path, [0, 5, 9], prefix="worst_")
    assert {k: p.name for k, p in best.items()} == {"confusion": "best_confusion.png",
                                                    "confusion_csv": "best_confusion.csv",
                                                    "gradcam": "best_gradcam.png"}
    assert all(p.exists() for p in [*best.values(), *worst.values()])
    with pytest.raises(ins.InspectError, match="out of range"):
        ins.arm_panels(run_dir, tmp_path, [10_000])


def test_run_dir_without_model_is_one_line_error(run_dir, tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text((run_dir / ".hydra" / "config.yaml").read_text())
    with pytest.raises(ins.InspectError, match="has no model.pt: the run did not complete"):
        ins.inspect_run(tmp_path)
    with pytest.raises(ins.InspectError, match="no .hydra/config.yaml"):
        ins.load_run(run_dir / ".hydra")


# ----------------------------------------------------------------------------- CLI
def test_cli_model_table():
    r = cli("model=lenet", "dataset=fashion_mnist")
    assert r.returncode == 0, r.stderr
    assert "6x28x28" in r.stdout and "16x5x5" in r.stdout and "61,706 total" in r.stdout
    r = cli("model=tinynet", "dataset=cifar2", "model.conv_channels=[32,16]")
    assert r.returncode == 0 and "38,386 total" in r.stdout  # the tutorial's NetWidth count


def test_cli_run_dir(run_dir, tmp_path):
    r = cli(str(run_dir), "inspect.images=2", "inspect.layers=[conv1,pool2]", f"inspect.out_dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.csv", "confusion.png", "feature_maps_conv1.png",
                                                          "feature_maps_pool2.png", "gradcam.png", "layers.txt"]
    assert "on 1000 images" in r.stdout


def test_sweep_job_dir_named_like_overrides_is_a_run(run_dir, tmp_path, capsys):
    job = tmp_path / "model=lenet,trainer.seed=0"  # how a sweep names its job directories
    shutil.copytree(run_dir, job, ignore=shutil.ignore_patterns("inspect"))
    assert inspect_main([str(job), "inspect.images=2", "inspect.layers=[conv2]"]) == 0
    assert "on 1000 images; wrote" in capsys.readouterr().out
    assert (job / "inspect" / "gradcam.png").is_file() and (job / "inspect" / "confusion.csv").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["{run}", "model=cnn3"], "only inspect.* and data.* can be overridden"),
    (["{run}", "inspect.gradcam_layer=nope"], "layer 'nope' is not in the model"),
    (["{run}", "inspect.layers=[fc1]"], "not feature maps"),
    (["{empty}"], "has no .hydra/config.yaml"),
    (["no/such/dir"], "neither a run directory nor an override"),
    (["model=nosuch"], "Could not find 'model/nosuch'"),
    (["{run}", "inspect.images=100000"], "inspect.images=100000 is invalid: at most 64"),
    pytest.param(["{run}", "inspect.device=cuda"], "inspect.device='cuda' is invalid: CUDA is not available here; "
                 "use inspect.device=cpu", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA")),
])
def test_cli_errors_are_one_line(run_dir, tmp_path, args, message):
    r = cli(*(a.format(run=run_dir, empty=tmp_path) for a in args))
    assert r.returncode == 1
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr

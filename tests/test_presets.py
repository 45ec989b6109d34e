"""The presets under conf/experiment/: each asks one question, changes one thing of its base, says so.

Composition checks run in-process (fast); the CLI smoke, which trains every new sweep preset on a
fake Fashion-MNIST with one seed and reads its report, is marked slow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from ablate.compose import compose
from ablate.identity import RUN_GROUPS

# preset -> (its one factor, its levels, the preset whose resolved run config is its base)
SWEEPS = {
    "homework_schedulers": ("scheduler", ["none", "step", "exponential", "cosine", "plateau", "onecycle"], None),
    "homework_structures": ("structure", ["base", "no_norm", "avg_pool", "gelu", "sigmoid", "narrow", "wide",
                                          "shallow", "deep"], None),
    "structure_norm": ("model.norm", ["batch", "none"], None),
    "structure_activation": ("model.activation", ["relu", "gelu", "tanh", "sigmoid"], None),
    "structure_pool": ("model.pool", ["max", "avg"], None),
    "structure_width": ("model.conv_channels", ["[16,32,64]", "[32,64,128]", "[64,128,256]"], None),
    "structure_depth": ("model.conv_channels", ["[32,64]", "[32,64,128]", "[32,64,128,256]"], None),
    "structure_residual": ("model.residual", ["True", "False"], "model.residual=true"),  # as Hydra writes bools
}
# What each tutorial's training DataLoader did with the ragged last batch (/work tutorials; d2l's loader
# and torch's default keep it, the birds-vs-planes loader passes drop_last=True).
TUTORIAL_DROP_LAST = {"cifar10_cnn": False, "cifar10_schedulers": False, "mnist_simple_cnn": False,
                      "lenet_fashion": False, "birds_vs_planes": True}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _run_config(overrides: list[str]) -> dict:
    cfg = compose(overrides)
    return _flat({g: OmegaConf.to_container(cfg[g], resolve=True) for g in RUN_GROUPS})


def _sweep(preset: str) -> tuple[str, dict[str, list[str]]]:
    cfg = compose([f"experiment={preset}"], return_hydra_config=True)
    parser = OverridesParser.create()
    params = {}
    for key, value in cfg.hydra.sweeper.params.items():
        (o,) = parser.parse_overrides([f"{key}={value}"])
        params[key] = list(o.sweep_string_iterator())
    return str(cfg.hydra.mode), params


@pytest.mark.parametrize("preset", SWEEPS)
def test_sweep_preset_is_one_factor_over_three_seeds(preset):
    factor, levels, _ = SWEEPS[preset]
    mode, params = _sweep(preset)
    assert mode == "RunMode.MULTIRUN"  # runs as a sweep without -m
    assert params == {factor: levels, "trainer.seed": ["0", "1", "2"]}


@pytest.mark.parametrize("preset", SWEEPS)
def test_each_level_changes_one_knob_of_the_base_recipe(preset):
    """Every arm's run config equals the base's but for the one knob its level names."""
    factor, levels, base_level = SWEEPS[preset]
    base = _run_config([f"experiment={preset}", base_level] if base_level else ["experiment=homework"])
    changed = {}
    for level in levels:
        arm = _run_config([f"experiment={preset}", f"{factor}={level}"])
        changed[level] = {k for k in arm.keys() | base.keys() if arm.get(k, "absent") != base.get(k, "absent")}
    if factor == "scheduler":  # a scheduler level swaps the scheduler node (its own keys), nothing else
        assert all(k.startswith("scheduler.") for keys in changed.values() for k in keys)
        assert changed["cosine"] == set() and all(changed[lvl] for lvl in levels if lvl != "cosine")
    elif factor == "structure":
        assert changed["base"] == set()
        assert all(len(keys) == 1 and next(iter(keys)).startswith("model.") for lvl, keys in changed.items()
                   if lvl != "base"), changed
        assert len({frozenset(keys) | {lvl} for lvl, keys in changed.items()}) == len(levels)
    else:
        assert [keys for keys in changed.values() if keys] == [{factor}] * (len(levels) - 1), changed
    # Every preset trains the homework recipe (the residual one on another model family).
    homework = _run_config(["experiment=homework"])
    assert {k for k in homework if not k.startswith(("model.", "scheduler.")) and homework[k] != base.get(k)} == set()


def test_homework_is_the_fixed_recipe():
    cfg = compose(["experiment=homework"])
    assert (cfg.dataset.name, cfg.model.name, cfg.optimizer.name, cfg.optimizer.lr, cfg.scheduler.name,
            cfg.augment.name, cfg.trainer.epochs, cfg.trainer.batch_size) == (
        "fashion_mnist", "cnn3", "adam", 1e-3, "cosine", "flip_crop", 10, 128)
    residual = compose(["experiment=structure_residual"])
    assert (residual.model.name, residual.model.depth, residual.model.width) == ("resnet", 3, 16)  # ResNet-20


@pytest.mark.parametrize("preset,drop_last", TUTORIAL_DROP_LAST.items())
def test_tutorial_presets_keep_or_drop_the_ragged_batch_as_their_tutorial(preset, drop_last):
    assert compose([f"experiment={preset}"]).trainer.drop_last is drop_last


def test_birds_vs_planes_has_a_weight_decay_arm_equal_to_its_l2():
    cfg = compose(["experiment=birds_vs_planes"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.regularization == "none,l2,l2_as_decay"
    l2 = compose(["experiment=birds_vs_planes", "regularization=l2"]).regularization
    decay = compose(["experiment=birds_vs_planes", "regularization=l2_as_decay"]).regularization
    assert (l2.l2, l2.weight_decay, decay.l2, decay.weight_decay) == (0.001, 0.0, 0.0, 2 * 0.001)


def test_resnet_fashion_preset():
    cfg = compose(["experiment=resnet_fashion"])
    assert (cfg.model.name, cfg.optimizer.name, cfg.optimizer.nesterov, cfg.scheduler.name,
            cfg.scheduler.max_lr, cfg.augment.name, cfg.trainer.batch_size) == (
        "resnet", "sgd", True, "onecycle", pytest.approx(0.2), "flip_crop", 512)


def test_every_preset_states_its_question_in_its_yaml_and_the_readme():
    readme = (ROOT / "README.md").read_text()
    for preset in [*SWEEPS, "homework", "resnet_fashion"]:
        text = (ROOT / "conf" / "experiment" / f"{preset}.yaml").read_text()
        assert f"python -m ablate.run experiment={preset}" in text, preset
        assert preset == "homework" or "Question:" in text or "Target:" in text, preset
        assert f"### `{preset}`" in readme, preset


# --------------------------------------------------------------------------- through the CLI
def _verdict_keys(report_md: Path) -> list[str]:
    text = report_md.read_text()
    section = text.split("## Verdicts", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\*\*(.+?)\*\*$", section, flags=re.M)


@pytest.mark.slow
def test_dry_run_lists_every_run_of_structure_norm(tmp_path):
    from fakedata import make_mnist_like

    sweep = tmp_path / "sweep"
    make_mnist_like(tmp_path / "data")  # a dry run checks the data set is there, as a launch does
    r = run_cli(["-m", "experiment=structure_norm", "dry_run=true", f"hydra.sweep.dir={sweep}",
                 f"data.root={tmp_path / 'data'}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("[dry run]")]
    assert sorted(ln.split(" -> ")[1] for ln in lines) == sorted(
        f"{sweep}/experiment=structure_norm,model.norm={n},trainer.seed={s} (new)" for n in ("batch", "none")
        for s in range(3))


@pytest.mark.slow
def test_every_new_preset_trains_and_reports_one_verdict_per_question(tmp_path):
    """Each new preset, one seed, one epoch of two small batches on a fake Fashion-MNIST: every run
    completes and the report has exactly one verdict, on the preset's factor."""
    from fakedata import make_mnist_like

    root = tmp_path / "data"
    make_mnist_like(root, "FashionMNIST", n_train=64, n_test=32)
    smoke = ["trainer.seed=0", "trainer.epochs=1", "trainer.limit_batches=2", "trainer.batch_size=16",
             "trainer.limit_eval_batches=1", "report.arm_panels=false", f"data.root={root}"]
    for preset, (factor, levels, _) in [*SWEEPS.items(), ("resnet_fashion", (None, [None], None))]:
        sweep = tmp_path / preset
        r = run_cli([f"experiment={preset}", *smoke, f"hydra.sweep.dir={sweep}", f"hydra.run.dir={sweep}"],
                    cwd=tmp_path)
        assert r.returncode == 0, (preset, (r.stdout + r.stderr)[-3000:])
        summaries = [json.loads(p.read_text()) for p in sweep.glob("**/summary.json")]
        assert len(summaries) == len(levels), preset
        assert {s["status"] for s in summaries} == {"completed"}, preset
        if factor is not None:
            assert _verdict_keys(sweep / "report" / "report.md") == [factor], preset

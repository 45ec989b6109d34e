"""How often do verdicts lie? Simulated sweeps with known truth, analysed the way a report would.

A sweep is L levels of one factor x n seeds of final test accuracy: base + a per-seed effect
(shared by every level that ran that seed: paired designs share seeds, unpaired ones do not) +
per-run noise; level 0 is better than the others by ``effect`` (0: the null, every level equal).
An analysis turns one sweep into verdicts; ``simulate(design, analyse)`` counts

  false winner  share of sweeps with at least one conclusive verdict that is wrong (the two
                levels are equal, or the sign is reversed): the family-wise error, want <= 5%
  coverage      share of the intervals stated that contain the true difference
  power         share of the truly different pairs it states that it settles with the right sign

Every analysis sees the same sweeps (same seed), so the rows of one design compare methods.
``report (run dirs)`` is the real report: each sweep is written as run directories
(tests/rundirs.py, the trainer's on-disk format, no training) and read back by
``ablate.report.build``; its verdicts are scored like the others.

    python scripts/simulate_verdicts.py            # every design, 2000 sweeps each (minutes)
    python scripts/simulate_verdicts.py --quick    # a few designs, 300 sweeps each (seconds)
    python scripts/simulate_verdicts.py --report   # the real report only, every design, 200 sweeps each
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from ablate import stats  # noqa: E402


@dataclass(frozen=True)
class Design:
    levels: int
    seeds: int
    paired: bool
    effect: float = 0.0  # level 0's advantage over every other level
    seed_sd: float = 0.01  # seed-to-seed spread (cancels when paired)
    run_sd: float = 0.004 / math.sqrt(2)  # per-run noise: paired differences have sd 0.4 points
    base: float = 0.85

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """Final accuracies, shape (levels, seeds); column s of a paired design is seed s for every level."""
        shared = rng.normal(0, self.seed_sd, (1 if self.paired else self.levels, self.seeds))
        acc = self.base + shared + rng.normal(0, self.run_sd, (self.levels, self.seeds))
        acc[0] += self.effect
        return acc

    def truth(self, a: int, b: int) -> float:
        return self.effect * ((a == 0) - (b == 0))

    def __str__(self) -> str:
        return (f"{self.levels} x {self.seeds} {'paired' if self.paired else 'unpaired'}"
                f"{f', +{100 * self.effect:g} pts' if self.effect else ', null'}")


@dataclass(frozen=True)
class Verdict:
    """One stated comparison: level a minus level b."""

    a: int
    b: int
    diff: float
    ci_low: float
    ci_high: float
    conclusive: bool


Analysis = Callable[[np.ndarray, bool], Sequence[Verdict]]


def _verdicts(pairs: Sequence[tuple[int, int]], comps: Sequence[stats.Comparison]) -> list[Verdict]:
    return [Verdict(a, b, c.diff, c.ci_low, c.ci_high, c.conclusive) for (a, b), c in zip(pairs, comps)]


def holm_all_pairs(acc: np.ndarray, paired: bool, alpha: float = 0.05) -> list[Verdict]:
    """t intervals, every pair of levels one Holm family."""
    pairs = list(itertools.combinations(range(len(acc)), 2))
    return _verdicts(pairs, stats.holm_family([stats.compare(acc[a], acc[b], paired) for a, b in pairs], alpha))


def holm_best_vs_rest(acc: np.ndarray, paired: bool, alpha: float = 0.05) -> list[Verdict]:
    """The best level by mean against each other one, Holm over those L - 1 only (ignores the selection)."""
    best = int(np.argmax(acc.mean(axis=1)))
    pairs = [(best, o) for o in range(len(acc)) if o != best]
    return _verdicts(pairs, stats.holm_family([stats.compare(acc[a], acc[b], paired) for a, b in pairs], alpha))


def holm_control_vs_rest(acc: np.ndarray, paired: bool, alpha: float = 0.05) -> list[Verdict]:
    """A level fixed before looking (here the last) against each other one, Holm over those L - 1."""
    control = len(acc) - 1
    pairs = [(o, control) for o in range(control)]
    return _verdicts(pairs, stats.holm_family([stats.compare(acc[a], acc[b], paired) for a, b in pairs], alpha))


def old_bootstrap_best_vs_rest(acc: np.ndarray, paired: bool, n_boot: int = 2000, seed: int = 0) -> list[Verdict]:
    """What the report did before: best vs each other, 95% percentile bootstrap, no adjustment."""
    rng = np.random.default_rng(seed)
    best = int(np.argmax(acc.mean(axis=1)))
    out = []
    for o in (o for o in range(len(acc)) if o != best):
        a, b = acc[best], acc[o]
        n = a.size
        if paired:
            boots = (a - b)[rng.integers(0, n, (n_boot, n))].mean(1)
        else:
            boots = a[rng.integers(0, n, (n_boot, n))].mean(1) - b[rng.integers(0, n, (n_boot, n))].mean(1)
        lo, hi = np.quantile(boots, [0.025, 0.975])
        out.append(Verdict(best, o, float(a.mean() - b.mean()), lo, hi, bool(lo > 0 or hi < 0)))
    return out


def real_report(acc: np.ndarray, paired: bool, alpha: float = 0.05) -> list[Verdict]:
    """The report itself: the sweep written as run directories, read by ablate.report.build (no figures)."""
    import rundirs  # tests/rundirs.py: run directories in the trainer's format

    from ablate import report
    from ablate.config import ReportConf

    with tempfile.TemporaryDirectory(prefix="simulate-verdicts-") as tmp:
        sweep = rundirs.finals_sweep(Path(tmp) / "sweep", acc, paired)
        rep = report.build([sweep], ReportConf(confidence=1 - alpha, arm_panels=False), plots=False)
    level = {rundirs.level_name(i): i for i in range(len(acc))}
    return [Verdict(level[v.a], level[v.b], v.c.diff, v.c.ci_low, v.c.ci_high, v.conclusive) for v in rep.verdicts]


ANALYSES: dict[str, Analysis] = {"t + Holm, all pairs": holm_all_pairs, "t + Holm, best vs rest": holm_best_vs_rest,
                                 "t + Holm, control vs rest": holm_control_vs_rest,
                                 "old: bootstrap best vs rest": old_bootstrap_best_vs_rest,
                                 "report (run dirs)": real_report}
REPORT = "report (run dirs)"


@dataclass(frozen=True)
class Result:
    families: int
    false_winner: float  # share of sweeps with >= 1 wrong conclusive verdict
    coverage: float  # share of stated intervals containing the truth (NaN: none stated)
    power: float  # share of the truly different pairs stated that are settled rightly (NaN: none stated)


def simulate(design: Design, analyse: Analysis, families: int = 2000, seed: int = 0) -> Result:
    """Draw ``families`` sweeps of ``design`` and score what ``analyse`` says about each."""
    rng = np.random.default_rng(seed)
    wrong_families = covered = intervals = found = different = 0
    for _ in range(families):
        wrong = False
        for v in analyse(design.draw(rng), design.paired):
            t = design.truth(v.a, v.b)
            if v.conclusive and (t == 0 or np.sign(v.diff) != np.sign(t)):
                wrong = True
            if math.isfinite(v.ci_low) and math.isfinite(v.ci_high):
                intervals += 1
                covered += v.ci_low <= t <= v.ci_high
            if t != 0:
                different += 1
                found += v.conclusive and np.sign(v.diff) == np.sign(t)
        wrong_families += wrong
    return Result(families, wrong_families / families, covered / intervals if intervals else math.nan,
                  found / different if different else math.nan)


EFFECTS = (0.0, 0.005, 0.02)  # level 0's advantage: none (the null), half a point, two points


def designs(quick: bool, effects: Sequence[float] = EFFECTS) -> list[Design]:
    if quick:
        return [Design(L, n, True, e) for L, n, e in itertools.product((3, 9), (3, 5), (0.0, 0.02))]
    return [Design(L, n, p, e) for p, e, L, n in itertools.product((True, False), effects, (2, 3, 4, 9),
                                                                  (2, 3, 5, 10))]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few designs, 300 sweeps each")
    ap.add_argument("--report", action="store_true",
                    help="only the real report on run directories (every design; 200 sweeps each by default)")
    ap.add_argument("--families", type=int,
                    help="sweeps per design (default 2000, 300 with --quick, 200 with --report)")
    ap.add_argument("--effects", type=lambda v: [float(x) / 100 for x in v.split(",")],
                    default=list(EFFECTS), help="level 0's advantage in points, comma-separated (default 0,0.5,2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    families = args.families or (300 if args.quick else 200 if args.report else 2000)
    analyses = {REPORT: real_report} if args.report else {k: v for k, v in ANALYSES.items() if k != REPORT}
    start = time.perf_counter()
    err = 3 * math.sqrt(0.05 * 0.95 / families)
    print(f"{families} sweeps per design; a true 5% false-winner rate reads as up to {100 * (0.05 + err):.1f}%\n")
    print(f"| {'design':<28} | {'analysis':<28} | false winner % | coverage % | power % |")
    print(f"|{'-' * 30}|{'-' * 30}|---------------:|-----------:|--------:|")
    for d in designs(args.quick, args.effects):
        for name, analyse in analyses.items():
            r = simulate(d, analyse, families, args.seed)
            cells = [f"{100 * x:.1f}" if math.isfinite(x) else "-" for x in (r.false_winner, r.coverage, r.power)]
            print(f"| {str(d):<28} | {name:<28} | {cells[0]:>14} | {cells[1]:>10} | {cells[2]:>7} |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

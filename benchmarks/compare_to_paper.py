"""Compare a run's ``eval/return`` curve with the official MR.Q per-seed results (10 seeds).

    python benchmarks/compare_to_paper.py --logdir logs/mrq/version_0 --env Dmc-cartpole-balance

Reads our TensorBoard scalars and ``../shared/reference/official-results/<benchmark>_results.txt`` (or
``--results FILE``), and prints, at every evaluation step both have: our return, the official 10-seed mean,
min and max, and whether ours lies inside the official seeds' range.
"""

from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "official-results"


def official_curves(path: Path, env: str) -> dict[int, list[float]]:
    """``{timestep: [seed returns]}`` for ``env`` from an official results file."""
    curves: dict[int, list[float]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("Env: "):
            current = line[5:].strip()
            continue
        if current != env or not line.strip() or not line[0].isdigit():
            continue
        fields = line.split()
        curves[int(fields[0])] = [float(v) for v in fields[1:]]
    if not curves:
        raise SystemExit(f"{env} not found in {path}")
    return curves


def results_file_for(env: str) -> Path:
    if env.startswith("Dmc-visual-"):
        return RESULTS_DIR / "dmc-visual_results.txt"
    if env.startswith("Dmc-"):
        return RESULTS_DIR / "dmc_results.txt"
    if env.startswith("Atari-"):
        return RESULTS_DIR / "atari_results.txt"
    return RESULTS_DIR / "gym_results.txt"


def our_curve(logdir: str, tag: str = "eval/return") -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dirs = sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True))
    curve: dict[int, float] = {}
    for events in {os.path.dirname(d) for d in dirs}:
        acc = EventAccumulator(events)
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            curve.update({e.step: e.value for e in acc.Scalars(tag)})
    if not curve:
        raise SystemExit(f"no {tag} scalars under {logdir}")
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", required=True)
    p.add_argument("--env", required=True, help="official name, e.g. Dmc-cartpole-balance, Gym-HalfCheetah-v4")
    p.add_argument("--results", type=Path, default=None)
    args = p.parse_args()
    official = official_curves(args.results or results_file_for(args.env), args.env)
    ours = our_curve(args.logdir)
    print(f"{'env step':>9} {'ours':>9} {'official mean':>14} {'min':>9} {'max':>9}  inside")
    for step in sorted(set(ours) & set(official)):
        seeds = official[step]
        mean = sum(seeds) / len(seeds)
        inside = min(seeds) <= ours[step] <= max(seeds)
        print(f"{step:>9} {ours[step]:>9.1f} {mean:>14.1f} {min(seeds):>9.1f} {max(seeds):>9.1f}  {'yes' if inside else 'NO'}")


if __name__ == "__main__":
    main()

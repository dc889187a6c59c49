"""Compare a run's ``eval/return`` curve with the official MR.Q per-seed results (10 seeds).

    python benchmarks/compare_to_paper.py --logdir logs/mrq/version_0 --env Dmc-cartpole-balance --official_dir DIR

Reads our TensorBoard scalars and the official per-seed results, ``DIR/<benchmark>_results.txt`` (the ``results/``
folder of https://github.com/facebookresearch/MRQ; CC BY-NC data, not shipped with this package) or ``--results
FILE``, and prints, at every evaluation step both have: our return, the official 10-seed mean, min and max, and
whether ours lies inside the official seeds' range.
"""

from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path

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


def results_file_for(env: str, directory: Path) -> Path:
    if env.startswith("Dmc-visual-"):
        return directory / "dmc-visual_results.txt"
    if env.startswith("Dmc-"):
        return directory / "dmc_results.txt"
    if env.startswith("Atari-"):
        return directory / "atari_results.txt"
    return directory / "gym_results.txt"


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
    p.add_argument("--official_dir", type=Path, help="the official repository's results/ folder")
    p.add_argument("--results", type=Path, default=None, help="one official results file (instead of --official_dir)")
    args = p.parse_args()
    if args.results is None and args.official_dir is None:
        p.error("pass --official_dir DIR (the results/ folder of github.com/facebookresearch/MRQ) or --results FILE")
    official = official_curves(args.results or results_file_for(args.env, args.official_dir), args.env)
    ours = our_curve(args.logdir)
    print(f"{'env step':>9} {'ours':>9} {'official mean':>14} {'min':>9} {'max':>9}  inside")
    for step in sorted(set(ours) & set(official)):
        seeds = official[step]
        mean = sum(seeds) / len(seeds)
        inside = min(seeds) <= ours[step] <= max(seeds)
        print(f"{step:>9} {ours[step]:>9.1f} {mean:>14.1f} {min(seeds):>9.1f} {max(seeds):>9.1f}  {'yes' if inside else 'NO'}")


if __name__ == "__main__":
    main()

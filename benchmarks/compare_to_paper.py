"""Compare one run's ``eval/return`` curve with the official MR.Q per-seed results (10 seeds), in the terminal.

    python benchmarks/compare_to_paper.py --logdir logs/mrq/version_0 --env Dmc-cartpole-balance

A thin use of the sweep report (``python -m mrq_lightning report``, which also draws the curves and aggregates a
whole sweep): prints, at every evaluation step both have, our return, the official 10-seed mean, min and max, and
whether ours lies inside the official range. The official results ship with the package (mrq_lightning/paper_data/,
CC BY-NC 4.0 data of the MR.Q authors).
"""

from __future__ import annotations

import argparse

from mrq_lightning.experiments.paper import official_curve
from mrq_lightning.experiments.report import env_rows
from mrq_lightning.experiments.scalars import run_curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", required=True, help="a run directory (or any folder above its event files)")
    p.add_argument("--env", required=True, help="official name, e.g. Dmc-cartpole-balance, Gym-HalfCheetah-v4")
    args = p.parse_args()
    official, ours = official_curve(args.env), run_curve(args.logdir)
    if official is None:
        p.error(f"{args.env} is not in the official results (the paper's 5 Gym, 28 DMC, 28 DMC-visual, 57 Atari envs)")
    if not ours:
        p.error(f"no eval/return scalars under {args.logdir}")
    steps = sorted(set(ours) & set(official.steps.tolist()))
    print(f"{'env step':>9} {'ours':>9} {'official mean':>14} {'min':>9} {'max':>9}  inside")
    for row in env_rows(args.env, {0: ours}, steps):
        print(f"{row['step']:>9} {row['ours']:>9.1f} {row['official_mean']:>14.1f} {row['official_min']:>9.1f} "
              f"{row['official_max']:>9.1f}  {'yes' if row['inside'] else 'NO'}")  # fmt: skip


if __name__ == "__main__":
    main()

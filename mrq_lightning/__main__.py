"""``python -m mrq_lightning fit --config configs/gym.yaml``; ``sweep`` and ``report`` for benchmark protocols."""

import difflib
import sys

from mrq_lightning.errors import MRQUserError
from mrq_lightning.rendering import check_mujoco_gl

SUBCOMMANDS = {
    "fit": "train MR.Q (python -m mrq_lightning fit --config configs/dmc.yaml --data.env Dmc-walker-run)",
    "test": "evaluate a checkpoint (python -m mrq_lightning test --config ... --ckpt_path PATH|last)",
    "sweep": "run every (env, seed) of a protocol on Ray (python -m mrq_lightning sweep --config ... --envs dmc "
    "--seeds 0-9 --root DIR)",
    "report": "curves and aggregates of a sweep against the paper (python -m mrq_lightning report --root DIR --out OUT)",
}
OVERVIEW = "usage: python -m mrq_lightning {fit,test,sweep,report} ... (add --help after one for its options)\n\n" + "\n".join(
    f"  {name:<8}{text}" for name, text in SUBCOMMANDS.items()
)


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    """The ``python -m mrq_lightning`` and ``mrq-lightning`` entry point: dispatch to a subcommand."""
    first = sys.argv[1] if len(sys.argv) > 1 else None
    if first in (None, "-h", "--help"):
        print(OVERVIEW)
        sys.exit(0 if first else 2)
    if not first.startswith("-") and first not in SUBCOMMANDS:
        close = difflib.get_close_matches(first, SUBCOMMANDS, n=1)
        _refuse(f"unknown subcommand {first!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                + f": choose from {', '.join(SUBCOMMANDS)} (python -m mrq_lightning --help)")
    try:
        check_mujoco_gl()  # before the CLI's imports can load MuJoCo (which fails with a traceback)
    except MRQUserError as err:
        _refuse(str(err))
    if first in ("sweep", "report"):
        from mrq_lightning.experiments.cli import main as experiments_main

        experiments_main(first, sys.argv[2:])
    from mrq_lightning.training.cli import main as training_main

    training_main()


if __name__ == "__main__":
    main()

"""``python -m mrq_lightning fit --config configs/gym.yaml``; ``sweep`` and ``report`` for benchmark protocols."""

import sys

from mrq_lightning.errors import MRQUserError
from mrq_lightning.rendering import check_mujoco_gl

if __name__ == "__main__":
    try:
        check_mujoco_gl()  # before the CLI's imports can load MuJoCo (which fails with a traceback)
    except MRQUserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if sys.argv[1:2] in (["sweep"], ["report"]):
        from mrq_lightning.experiments.cli import main as experiments_main

        experiments_main(sys.argv[1], sys.argv[2:])
    from mrq_lightning.training.cli import main

    main()

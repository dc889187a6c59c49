"""``python -m mrq_lightning {fit,test,validate} --config configs/<benchmark>.yaml``: LightningCLI entry point."""

from __future__ import annotations

import logging
import os
import sys
import warnings

from lightning.pytorch.cli import LightningCLI

from mrq_lightning.errors import MRQUserError
from mrq_lightning.training.callbacks import EnvStepProgressBar
from mrq_lightning.training.datamodule import MRQDataModule
from mrq_lightning.training.module import MRQ

__all__ = ["MRQLightningCLI", "main"]

TRAINER_DEFAULTS = {
    # One epoch = the whole env-step budget; Lightning's global_step counts optimizer steps, never the budget.
    "max_epochs": 1,
    "max_steps": -1,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
    "log_every_n_steps": 1_000_000,  # we write TensorBoard scalars ourselves, keyed by env steps
    "enable_model_summary": True,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "mrq", "default_hp_metric": False},
    },
}


class MRQLightningCLI(LightningCLI):
    """LightningCLI with MR.Q's defaults; ``data.official_quirks`` also drives the model's switch."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.official_quirks", "model.init_args.official_quirks")
        # Always-on callbacks, configurable as top-level groups (e.g. --progress_bar.refresh_rate 500).
        parser.add_lightning_class_args(EnvStepProgressBar, "progress_bar")


class _DropTips(logging.Filter):
    """Lightning advertises cloud products on every run; keep the console for training output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def _quiet_framework_noise() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())
    # Expected in our design (a sized IterableDataset driven by env steps; scalars written by env step).
    for pattern in (
        ".*IterableDataset.*has `__len__` defined.*",
        ".*smaller than the logging interval.*",
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*does not have many workers.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def build_cli(args=None, run: bool = True) -> MRQLightningCLI:
    """Build (and by default run) the CLI; ``args`` as a list replaces ``sys.argv[1:]``."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    _quiet_framework_noise()
    return MRQLightningCLI(
        MRQ,
        MRQDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def _user_error(err: BaseException) -> MRQUserError | None:
    """The MRQUserError behind ``err``, if any (jsonargparse wraps errors raised while instantiating classes)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MRQUserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(args=None) -> None:
    try:
        build_cli(args)
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        # A user mistake with a message that names the fix: no traceback (nothing written is touched).
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

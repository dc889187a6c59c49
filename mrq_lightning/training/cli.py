"""``python -m mrq_lightning {fit,test,validate} --config configs/<benchmark>.yaml``: LightningCLI entry point."""

from __future__ import annotations

import os

from lightning.pytorch.cli import LightningCLI

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
        "init_args": {"save_dir": "logs", "name": "mrq"},
    },
    "callbacks": [{"class_path": "mrq_lightning.training.callbacks.EnvStepProgressBar"}],
}


class MRQLightningCLI(LightningCLI):
    """LightningCLI with MR.Q's defaults; ``data.official_quirks`` also drives the model's switch."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.official_quirks", "model.init_args.official_quirks")


def main(args=None) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    MRQLightningCLI(
        MRQ,
        MRQDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()

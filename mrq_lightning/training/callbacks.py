"""Lightning callbacks: an env-step progress bar."""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["EnvStepProgressBar"]


class EnvStepProgressBar(TQDMProgressBar):
    """Progress in environment steps (one training batch = one env step), with steps/s and the last eval return.

    Refreshes every ``refresh_rate`` env steps (default 100) so the bar costs well under 1% of step time.
    """

    def __init__(self, refresh_rate: int = 100, leave: bool = True) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.unit = "env step"
        return bar

    def on_train_epoch_start(self, trainer, *_):
        super().on_train_epoch_start(trainer)
        # The env-step stream starts at the restored step when resuming.
        self.train_progress_bar.set_description("MR.Q")
        self.train_progress_bar.initial = 0

    def get_metrics(self, trainer, pl_module):
        metrics = {}
        rate = getattr(pl_module, "steps_per_s", None)
        if rate is not None:
            metrics["steps/s"] = f"{rate:.1f}"
        last_eval = getattr(pl_module, "last_eval_return", math.nan)
        if not math.isnan(last_eval):
            metrics["eval_return"] = f"{last_eval:.1f}"
        metrics["env_steps"] = getattr(pl_module, "env_steps", 0)
        return metrics

"""Lightning callbacks: an env-step progress bar."""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["EnvStepProgressBar"]


class EnvStepProgressBar(TQDMProgressBar):
    """Progress in environment steps (one training batch = one env step), with steps/s and the last eval return.

    Refreshes every ``refresh_rate`` env steps (default 100) so the bar costs well under 1% of step time.

    Args:
        refresh_rate: env steps between refreshes.
        leave: keep the finished bar on screen.
    """

    def __init__(self, refresh_rate: int = 100, leave: bool = True) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.unit = "env step"
        return bar

    def on_train_epoch_start(self, trainer, *_):
        super().on_train_epoch_start(trainer)
        # Count absolute env steps, so a resumed run's bar starts at the restored step (one epoch = the whole budget).
        datamodule = trainer.datamodule
        bar = self.train_progress_bar
        bar.set_description("MR.Q")
        if datamodule is not None and getattr(datamodule, "total_steps", None):
            bar.total = datamodule.total_steps
            bar.initial = bar.n = datamodule.env_steps
            bar.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        n = getattr(pl_module, "env_steps", batch_idx + 1)
        bar = self.train_progress_bar
        if bar is not None and self._should_update(n, bar.total):
            bar.n = n
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))

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

"""Lightning callbacks: an env-step progress bar."""

from __future__ import annotations

import math
import time

from lightning.pytorch.callbacks import TQDMProgressBar

from mrq_lightning.errors import ConfigurationError

__all__ = ["EnvStepProgressBar"]


class EnvStepProgressBar(TQDMProgressBar):
    """Progress in environment steps (one training batch = one env step), with steps/s and the last eval return.

    Refreshes every ``refresh_rate`` env steps (default 100) or every ``REFRESH_SECONDS``, whichever comes first, so
    the bar costs well under 1% of step time and a slow stretch (an encoder burst on CPU) still moves it. The rate
    and the ETA are a moving average of recent progress (tqdm ``smoothing``), not the average since the start: the
    random phase runs about 100x faster than learning and would otherwise make the ETA hours too short.

    Args:
        refresh_rate: env steps between refreshes (0: no progress bar).
        leave: keep the finished bar on screen.
    """

    REFRESH_SECONDS = 2.0
    SMOOTHING = 0.3  # tqdm's exponential moving average factor over refreshes (0 = average since the start)

    def __init__(self, refresh_rate: int = 100, leave: bool = True) -> None:
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ConfigurationError(f"progress_bar.refresh_rate must be an integer >= 0 (0 = no bar), got {refresh_rate!r}")
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self._last_refresh = 0.0

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.unit = "env step"
        bar.smoothing = self.SMOOTHING
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
        now = time.monotonic()
        if bar is not None and (self._should_update(n, bar.total) or now - self._last_refresh >= self.REFRESH_SECONDS):
            self._last_refresh = now
            bar.update(n - bar.n)  # update(), not n = ...: tqdm's smoothed rate only sees increments
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

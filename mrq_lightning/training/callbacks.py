"""Lightning callbacks: an env-step progress bar with an honest rate and ETA."""

from __future__ import annotations

import math
import time
from collections import deque

from lightning.pytorch.callbacks import TQDMProgressBar

from mrq_lightning.errors import ConfigurationError

__all__ = ["EnvStepProgressBar", "RecentRate"]


class RecentRate:
    """Env steps per second over the last ``window_s`` seconds (not since the start).

    Why not tqdm's own rate: the random phase runs about 100x faster than learning, and tqdm's average (or its
    smoothed average, which adapts per refresh and carries the warm-up's huge increments) then promises an ETA hours
    too short. ``reset()`` starts a new window when the phase changes.
    """

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._marks: deque[tuple[float, int]] = deque()

    def reset(self) -> None:
        self._marks.clear()

    def add(self, now: float, step: int) -> None:
        self._marks.append((now, step))
        while len(self._marks) > 2 and now - self._marks[1][0] >= self.window_s:
            self._marks.popleft()

    def per_second(self) -> float | None:
        if len(self._marks) < 2:
            return None
        (t0, n0), (t1, n1) = self._marks[0], self._marks[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class EnvStepProgressBar(TQDMProgressBar):
    """Progress in environment steps (one training batch = one env step), with the recent rate, the ETA and the
    last eval return.

    Refreshes every ``refresh_rate`` env steps or every ``REFRESH_SECONDS``, whichever comes first (well under 1% of
    step time). The rate is measured over the last minute (:class:`RecentRate`), and during the random phase the
    ETA is not shown (that phase is far faster than learning). An encoder burst (``target_update_period`` encoder
    updates inside one env step; tens of seconds on a CPU) is announced on the bar before it starts.

    Args:
        refresh_rate: env steps between refreshes (0: no progress bar).
        leave: keep the finished bar on screen.
    """

    REFRESH_SECONDS = 2.0
    BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

    def __init__(self, refresh_rate: int = 100, leave: bool = True) -> None:
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ConfigurationError(f"progress_bar.refresh_rate must be an integer >= 0 (0 = no bar), got {refresh_rate!r}")
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self._last_refresh = 0.0
        self._burst_shown = False
        self._rate = RecentRate()
        self._learning = False

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.unit = "env step"
        bar.bar_format = self.BAR_FORMAT  # tqdm's own rate and ETA replaced by ours (in the postfix)
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
        self._rate.reset()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        updater, bar = getattr(pl_module, "updater", None), self.train_progress_bar
        if bar is not None and updater is not None and getattr(pl_module, "learning", False) and updater.encoder_burst_due:
            bar.set_description(f"MR.Q (encoder updates x{updater.hparams.target_update_period})", refresh=True)
            self._burst_shown = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is None:
            return
        if self._burst_shown:
            self._burst_shown = False
            bar.set_description("MR.Q", refresh=False)
        n = getattr(pl_module, "env_steps", batch_idx + 1)
        now = time.monotonic()
        learning = bool(getattr(pl_module, "learning", True))
        if learning != self._learning:
            self._learning = learning
            self._rate.reset()  # a new phase, a new rate
        if self._should_update(n, bar.total) or now - self._last_refresh >= self.REFRESH_SECONDS:
            self._last_refresh = now
            self._rate.add(now, n)  # a mark per refresh is enough for a one-minute window
            bar.n = n
            bar.set_postfix(self._postfix(trainer, pl_module, n, bar.total))

    def _postfix(self, trainer, pl_module, n: int, total: int | None) -> dict[str, str]:
        metrics = {}
        rate = self._rate.per_second()
        if rate is not None:
            metrics["env steps/s"] = f"{rate:.1f}"
            if not self._learning:
                metrics["ETA"] = "after the random phase"
            elif total and rate > 0:
                metrics["ETA"] = _clock((total - n) / rate)
        last_eval = getattr(pl_module, "last_eval_return", math.nan)
        if not math.isnan(last_eval):
            metrics["eval_return"] = f"{last_eval:.1f}"
        return metrics

    def get_metrics(self, trainer, pl_module):
        return self._postfix(trainer, pl_module, getattr(pl_module, "env_steps", 0), None)

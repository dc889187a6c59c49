"""Read a run's evaluation curve from its TensorBoard event files (x-axis: environment steps)."""

from __future__ import annotations

import os
from pathlib import Path

EVAL_TAG = "eval/return"


def log_directories(run_dir: str | os.PathLike) -> list[Path]:
    """Every directory under ``run_dir`` that holds TensorBoard event files, oldest first."""
    found = {p.parent for p in Path(run_dir).rglob("events.out.tfevents.*")}
    return sorted(found, key=lambda d: max(f.stat().st_mtime for f in d.glob("events.out.tfevents.*")))


def scalar_curve(log_dir: str | os.PathLike, tag: str = EVAL_TAG) -> dict[int, float]:
    """``{env step: value}`` of ``tag`` in one log directory, as TensorBoard shows it: events that a resumed run
    purged (those past the checkpoint it resumed from) are dropped."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every point
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return {}
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def run_curve(run_dir: str | os.PathLike, tag: str = EVAL_TAG) -> dict[int, float]:
    """The evaluation curve of a sweep run: that of its newest log directory with any ``tag`` point (a run that was
    restarted fresh under another configuration leaves its older version directories behind)."""
    for log_dir in reversed(log_directories(run_dir)):
        curve = scalar_curve(log_dir, tag)
        if curve:
            return curve
    return {}


class CachedCurves:
    """:func:`run_curve` per run directory, re-read only when one of its event files changed (size or mtime): the
    sweep's summary asks for every run's latest return once a minute."""

    def __init__(self, tag: str = EVAL_TAG) -> None:
        self.tag = tag
        self._cache: dict[Path, tuple[tuple, dict[int, float]]] = {}

    def get(self, run_dir: str | os.PathLike) -> dict[int, float]:
        run_dir = Path(run_dir)
        files = sorted(run_dir.rglob("events.out.tfevents.*"))
        try:
            key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        except OSError:  # a file replaced while listing: read again next time
            key = ()
        cached = self._cache.get(run_dir)
        if cached is None or cached[0] != key or not key:
            cached = (key, run_curve(run_dir, self.tag) if files else {})
            self._cache[run_dir] = cached
        return cached[1]

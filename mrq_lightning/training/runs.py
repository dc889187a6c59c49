"""Which saved run may be resumed: a run's configuration (``mrq_run.json``) and how another differs from it.

``--ckpt_path last`` and a requeued SLURM job resume only a run whose configuration matches this one: env, seed,
model hyperparameters (except logging cadence), the data settings that shape the replay and the environment,
precision and number of ranks. The budget and evaluation settings may differ (a resumed run may train longer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mrq_lightning.training.resume import RESUME_FREE_HPARAMS

__all__ = ["config_differences", "newest_matching", "read_run_file", "run_config"]


def run_config(trainer, module=None, datamodule=None) -> dict[str, Any]:
    """What a run must share with a checkpoint to resume it (JSON-ready). ``module`` / ``datamodule``: before
    ``fit`` attaches them, the ones it will train."""
    module = module or trainer.lightning_module
    datamodule = datamodule or trainer.datamodule
    model = {k: v for k, v in sorted(module.hparams.items()) if k not in RESUME_FREE_HPARAMS and not k.startswith("_")}
    config = {"env": datamodule.env_name, "seed": datamodule.seed, "world_size": trainer.world_size,
              "precision": str(trainer.precision), "model": model, "data": datamodule.resume_config()}  # fmt: skip
    return json.loads(json.dumps(config))


def read_run_file(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def config_differences(mine: dict, info: dict | None) -> list[str]:
    """How a saved run's configuration differs from ``mine`` (empty: it can be resumed)."""
    if info is None:
        return []  # no run file (written before the first checkpoint of a run): the checkpoint checks itself
    diffs = []
    for key, value in mine.items():
        saved = info.get(key, value)  # a run file of an older version compares on what it has
        if isinstance(value, dict) and isinstance(saved, dict):
            diffs += [f"{key}.{k}: {saved.get(k)!r} there, {v!r} here" for k, v in value.items() if saved.get(k, v) != v]
        elif saved != value:
            diffs.append(f"{key}: {saved!r} there, {value!r} here")
    return diffs


def newest_matching(mine: dict, runs: list[tuple[Path, dict | None]]) -> tuple[Path | None, list[str]]:
    """The newest ``last.ckpt`` among ``runs`` (``(last.ckpt, run file)``) whose configuration matches ``mine``,
    and a note for each run skipped (its directory and differences)."""
    best, skipped = None, []
    for last, info in runs:
        diffs = config_differences(mine, info)
        if diffs:
            skipped.append(f"{last.parent.parent.name} ({'; '.join(diffs[:3])}{' ...' if len(diffs) > 3 else ''})")
        elif best is None or last.stat().st_mtime > best.stat().st_mtime:
            best = last
    return best, skipped

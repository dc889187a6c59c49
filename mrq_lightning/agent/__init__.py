"""MR.Q's training procedure without a training framework: the update and the warm-up rule (algorithm §9)."""

from mrq_lightning.agent.updater import MRQUpdater, metric_tag
from mrq_lightning.agent.warmup import Warmup

__all__ = ["MRQUpdater", "Warmup", "metric_tag"]

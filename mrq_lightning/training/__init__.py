"""Lightning orchestration (the only part of the package that imports ``lightning``)."""

from mrq_lightning.training.checkpoint import MRQCheckpoint
from mrq_lightning.training.datamodule import MRQDataModule
from mrq_lightning.training.module import MRQ

__all__ = ["MRQ", "MRQCheckpoint", "MRQDataModule"]

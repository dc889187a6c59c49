"""``python -m mrq_lightning {fit,test} --config configs/<benchmark>.yaml``: LightningCLI entry point.

Before any work starts, everything a user can get wrong is refused with one line naming the fix (exit code 2):
a misspelled option (with a did-you-mean), a wrong type, an out-of-range value (the classes validate their own
arguments), a negative seed, an unwritable output directory, an invalid ``MUJOCO_GL``, ``test`` without a
checkpoint. A start refused after the logger made its run directory leaves no empty ``version_<k>`` behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from mrq_lightning.errors import CheckpointError, ConfigurationError, MRQUserError
from mrq_lightning.rendering import check_mujoco_gl
from mrq_lightning.training.callbacks import EnvStepProgressBar
from mrq_lightning.training.checkpoint import MRQCheckpoint, check_writable_directory, missing_checkpoint_error
from mrq_lightning.training.cli_messages import HELP_ALL, one_line_error, option_groups, short_help
from mrq_lightning.training.datamodule import MRQDataModule
from mrq_lightning.training.module import BUDGET_IN_ENV_STEPS, MRQ, lightning_budget_set
from mrq_lightning.training.signals import slurm_job_id, slurm_requeue_signal
from mrq_lightning.training.videos import EvaluationVideos

_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")  # --ckpt_path values Lightning resolves itself (not files)

__all__ = ["MRQLightningCLI", "main"]

CONFIGURABLE = {"model": MRQ, "data": MRQDataModule, "checkpoint": MRQCheckpoint, "progress_bar": EnvStepProgressBar}
TOP_LEVEL_KEYS = ("config", "seed_everything", "ckpt_path", "print_config", "weights_only")
PRESETS = ("gym", "dmc", "dmc_visual", "atari", "quickstart", "smoke")
_SEED_MAX = 2**32 - 1  # numpy's seed range

TRAINER_DEFAULTS = {
    # One epoch = the whole env-step budget (MRQUpdater steps its optimizers itself: global_step stays 0, unused).
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


def _env_seed(seed_everything) -> int:
    if isinstance(seed_everything, bool) or seed_everything is None:
        return 0
    return int(seed_everything)


class _RefusedStart:
    """What a start refused before training may clean up (see ``_remove_runs_of_a_refused_start``)."""

    def __init__(self) -> None:
        self.loggers: list = []  # (logger, nearest ancestor of its root that existed, run directories that existed)
        self.started = False


_refused_start = _RefusedStart()


class _MarkStarted(Callback):
    """From the first env step (or test episode) on, nothing this run created is ever removed."""

    def on_train_start(self, trainer, pl_module) -> None:
        _refused_start.started = True

    def on_test_start(self, trainer, pl_module) -> None:
        _refused_start.started = True


class MRQArgumentParser(LightningArgumentParser):
    """Parse errors in one line, with a did-you-mean for misspelled options (``cli_messages.py``)."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)
        from lightning.pytorch import Trainer

        groups = {**option_groups(CONFIGURABLE), **option_groups({"trainer": Trainer})}
        subcommand = next((a for a in sys.argv[1:3] if a in MRQLightningCLI.subcommands()), "fit")
        print(f"error: {one_line_error(message, groups, TOP_LEVEL_KEYS, subcommand)}", file=sys.stderr)
        self.exit(2)


class MRQLightningCLI(LightningCLI):
    """LightningCLI with MR.Q's defaults; ``data.official_quirks`` also drives the model's switch."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Only what MR.Q implements: validate/predict have no meaning for an agent that evaluates by env episodes.
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "test": {"model", "dataloaders", "datamodule"},
        }

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # Before LightningCLI seeds (with a traceback for a negative seed).
        subcommand = self.config.get("subcommand")
        seed = (self.config[subcommand] if subcommand else self.config).get("seed_everything")
        if not isinstance(seed, bool) and seed is not None and not 0 <= int(seed) <= _SEED_MAX:
            raise ConfigurationError(f"--seed_everything {seed} is out of range: use an integer in [0, {_SEED_MAX}]")

    def before_instantiate_classes(self) -> None:
        """Checks that need no class: output directories, and ``test``'s checkpoint."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if lightning_budget_set(trainer.get("max_steps"), trainer.get("min_steps"), trainer.get("max_epochs"),
                                trainer.get("min_epochs")):  # fmt: skip
            raise ConfigurationError(BUDGET_IN_ENV_STEPS)
        root = trainer.get("default_root_dir")
        logger = trainer.get("logger")
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if root is not None:
            check_writable_directory(root, "--trainer.default_root_dir")
            if init_args is not None and init_args.get("save_dir") == "logs":
                init_args["save_dir"] = str(Path(root) / "logs")  # the default logger follows default_root_dir
        if init_args is not None and init_args.get("save_dir"):
            check_writable_directory(init_args["save_dir"], "--trainer.logger.init_args.save_dir")
        video_dir = (config.get("video") or {}).get("save_dir")
        if video_dir:
            check_writable_directory(video_dir, "--video.save_dir")
        if self.subcommand == "test" and not config.get("ckpt_path"):
            raise ConfigurationError(
                "test evaluates a trained checkpoint: pass --ckpt_path PATH.ckpt, or --ckpt_path last for the newest run "
                "of this configuration"
            )

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.official_quirks", "model.init_args.official_quirks")
        # One seed per run: `seed_everything` seeds torch/numpy/python and the environments (data.seed; the eval env
        # uses seed + 100). `seed_everything: true` (a random seed) is not reproducible and maps to env seed 0.
        parser.link_arguments("seed_everything", "data.init_args.seed", compute_fn=_env_seed)
        # Always-on callbacks, configurable as top-level groups (e.g. --progress_bar.refresh_rate 500,
        # --checkpoint.every_n_env_steps 50000).
        parser.add_lightning_class_args(EnvStepProgressBar, "progress_bar")
        parser.add_lightning_class_args(MRQCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EvaluationVideos, "video")  # --video.every_n_evals, --video.save_dir

    def _instantiate_trainer(self, config, callbacks):
        # (Private LightningCLI hook, lightning 2.6.6; listed in third_party.py.)
        # `--trainer.enable_checkpointing false` turns the always-on env-step checkpoint callback off (Lightning
        # would otherwise refuse a ModelCheckpoint subclass next to that flag).
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, MRQCheckpoint)]
        callbacks = [*callbacks, _MarkStarted()]
        if self.subcommand == "test":
            # `test` logs into the checkpoint's run directory: its config.yaml is the training run's, keep it.
            self.save_config_callback = None
            callbacks = [c for c in callbacks if not isinstance(c, SaveConfigCallback)]
        try:
            return super()._instantiate_trainer(config, callbacks)
        except MRQUserError:
            raise
        except (TypeError, ValueError, RuntimeError, MisconfigurationException) as err:  # Lightning's checks of
            # trainer arguments (devices, strategy, an accelerator this machine does not have ...)
            raise ConfigurationError(f"--trainer options refused by Lightning: {err}") from err

    def _parse_ckpt_path(self) -> None:
        # (Private LightningCLI hook, lightning 2.6.6; listed in third_party.py.)
        # LightningCLI reads an explicit checkpoint file's model hyperparameters into the config (so the model is
        # rebuilt as it was saved); an unreadable file must give a CheckpointError, not a traceback. A missing file
        # is refused here, before the trainer opens a log directory that would be left behind empty.
        if self.config.get("subcommand"):
            path = self.config[self.config.subcommand].get("ckpt_path")
            if path and str(path) not in _CKPT_KEYWORDS and not Path(path).is_file():
                raise missing_checkpoint_error(path)
        try:
            super()._parse_ckpt_path()
        except (SystemExit, MRQUserError):
            raise
        except Exception as err:  # truncated zip, garbage bytes, refused pickle ...
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise CheckpointError(
                f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({type(err).__name__}: {err}). Fix: resume "
                "from another checkpoint (e.g. an earlier env_step=*.ckpt in the same directory) or start a fresh "
                "run without --ckpt_path."
            ) from err

    def before_fit(self) -> None:
        # `--ckpt_path <file>` inside this logger's tree: keep logging into that run's directory (`last` is
        # resolved by MRQCheckpoint itself, before the logger picks a version).
        checkpoint = self._mrq_checkpoint()
        if checkpoint is None:
            return
        config = self.config_init[self.subcommand]
        ckpt_path = config.get("ckpt_path")
        job = slurm_job_id() if slurm_requeue_signal(self.trainer) is not None else None
        if not ckpt_path and job is not None and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
            # A requeued SLURM job runs its command again, unchanged: it resumes the run it saved (training/signals.py).
            requeued = checkpoint.find_requeued(self.trainer, job, self.model, self.datamodule)
            if requeued is not None:
                config["ckpt_path"] = ckpt_path = str(requeued)
        if ckpt_path and str(ckpt_path) not in _CKPT_KEYWORDS:
            checkpoint.continue_run_of(self.trainer, ckpt_path)
        self._note_run_directories()

    def before_test(self) -> None:
        # Log `test/*` into the checkpoint's run directory, at its env step (`last`: MRQCheckpoint resolves it).
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        checkpoint = self._mrq_checkpoint()
        if checkpoint is not None and ckpt_path and str(ckpt_path) not in _CKPT_KEYWORDS:
            checkpoint.continue_run_of(self.trainer, ckpt_path)
        self._note_run_directories()

    def _note_run_directories(self) -> None:
        """Remember what exists now: a start refused before training removes only the run directory it created."""
        for logger in self.trainer.loggers:
            root = getattr(logger, "root_dir", None)
            if root is not None:
                root = Path(root).absolute()
                existing = root
                while not existing.exists() and existing != existing.parent:
                    existing = existing.parent
                _refused_start.loggers.append((logger, existing, {p.name for p in root.iterdir()} if root.is_dir() else set()))
    def _mrq_checkpoint(self) -> MRQCheckpoint | None:
        return next((c for c in self.trainer.checkpoint_callbacks if isinstance(c, MRQCheckpoint)), None)

    @property
    def exit_code(self) -> int:
        """``128 + signal`` when a stop signal ended the run (after its checkpoint), else 0."""
        checkpoint = self._mrq_checkpoint() if getattr(self, "trainer", None) is not None else None
        signum = checkpoint.stopped_by_signal if checkpoint is not None else None
        return 128 + signum if signum else 0


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
        ".*there is no last checkpoint available.*",  # MRQCheckpoint.find_last has said why, in MR.Q's terms
    ):
        warnings.filterwarnings("ignore", message=pattern)


def build_cli(args=None, run: bool = True) -> MRQLightningCLI:
    """Build (and by default run) the CLI; ``args`` as a list replaces ``sys.argv[1:]``."""
    check_mujoco_gl()
    _quiet_framework_noise()
    _refused_start.__init__()
    parser_kwargs = {"allow_abbrev": False, **{name: {"allow_abbrev": False} for name in MRQLightningCLI.subcommands()}}
    return MRQLightningCLI(
        MRQ,
        MRQDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        parser_class=MRQArgumentParser,
        parser_kwargs=parser_kwargs,
        auto_configure_optimizers=False,  # MR.Q's three AdamW optimizers are part of the algorithm (algorithm §2.1)
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


def _launched_by_lightning(trainer) -> bool:
    """This process is a DDP rank started by Lightning's subprocess launcher (not rank 0, not srun/torchrun)."""
    launcher = trainer.strategy.launcher
    return isinstance(launcher, _SubprocessScriptLauncher) and trainer.local_rank != 0


def _remove_runs_of_a_refused_start() -> None:
    """A start refused before its first env step: delete the run directory its logger created (and logs/mrq, logs if
    this start made them and they are empty). Never after training started, never a directory that existed."""
    if _refused_start.started:
        return
    for logger, existed, before in _refused_start.loggers:
        root = Path(logger.root_dir).absolute()
        run_dir = Path(logger.log_dir).absolute()
        if run_dir.parent == root and run_dir.name not in before and run_dir.is_dir():
            if not any(run_dir.glob("checkpoints/*.ckpt")):
                shutil.rmtree(run_dir, ignore_errors=True)
        for created in [root, *root.parents]:  # e.g. logs/mrq, then logs, if this start made them and they are empty
            if created == existed or not created.is_relative_to(existed):
                break
            try:
                created.rmdir()
            except OSError:
                break


def _short_help_requested(argv: list[str]) -> str | None:
    """The subcommand whose short help was asked for (``fit --help``), else ``None``."""
    if argv and argv[0] in MRQLightningCLI.subcommands() and any(a in ("-h", "--help") for a in argv[1:]):
        return argv[0]
    return None


def main(args=None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    try:
        check_mujoco_gl()
        subcommand = _short_help_requested(argv)
        if subcommand is not None:
            print(short_help(subcommand, CONFIGURABLE, PRESETS))
            return
        argv = ["--help" if a == HELP_ALL else a for a in argv]
        if args is None:
            sys.argv[1:] = argv  # LightningCLI reads sys.argv (DDP workers re-run it)
        cli = build_cli(None if args is None else argv)
        if cli.exit_code:
            # Stopped by a signal after a checkpoint: a scheduler must not see success. Ranks that Lightning's DDP
            # launcher started exit 0 (a non-zero child makes the launcher SIGKILL rank 0, which reports 128 + n).
            sys.exit(0 if _launched_by_lightning(cli.trainer) else cli.exit_code)
    except SIGTERMException:
        sys.exit(128 + signal.SIGTERM)  # Lightning's own SIGTERM path (before MR.Q's handler): not a success
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        # A user mistake with a message that names the fix: no traceback, and no empty run directory left behind.
        _remove_runs_of_a_refused_start()
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

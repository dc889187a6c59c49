"""``MRQ``: the LightningModule. Orchestration only: the update is :class:`~mrq_lightning.agent.MRQUpdater`.

Per ``training_step`` (= one environment step, already taken and stored by the DataModule):

1. once the warm-up is over (:class:`~mrq_lightning.agent.Warmup`), ``updater.step(buffer)``: on RL update n with
   (n - 1) mod 250 == 0 a hard target sync, a reward-scale refresh and 250 encoder updates, then one value update
   (grad-norm clip 20), one policy update and the LAP priority write-back (algorithm §9);
2. evaluation every ``eval_every`` env steps; TensorBoard scalars every ``log_every_n_env_steps``.

Every count users see is in environment steps: ``env_steps`` is stored in the checkpoint. The updater steps its
optimizers itself, so Lightning's ``global_step`` stays 0 (``--trainer.max_steps`` is refused: use
``--data.total_steps``).

Distributed data parallel (``--trainer.devices N --trainer.strategy ddp_find_unused_parameters_true``): every rank
has its own DataModule (env seeded ``seed + 1000 * rank``, its own collector and replay buffer) and its own torch /
numpy / python RNG streams (``seed + 1000 * rank``); one ``training_step`` is one env step *per rank*, so one update
uses N env steps and a global batch of N x ``batch_size`` (DDP averages the gradients; parameters stay identical on
all ranks). The reward scale r̄ is the mean over ranks of each rank's buffer mean, so every rank uses the same one.
Learning starts on all ranks at the same env step (under ``official_quirks`` once every rank's buffer holds more
than ``random_steps`` slots). ``data.total_steps`` counts env steps per rank (the TensorBoard x-axis);
``train/global_env_steps`` = N x env steps. Evaluation and TensorBoard run on rank 0 only.

Precision: ``32-true`` or ``bf16-mixed`` (autocast around the networks; two-hot, TD targets, reward scaling and
priorities stay fp32 inside :class:`MRQLoss`). ``16-mixed`` on a GPU is refused (see :meth:`setup`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict
from statistics import mean

import torch
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import ExplorationType

from mrq_lightning.agent import MRQUpdater, metric_tag
from mrq_lightning.errors import MRQUserError
from mrq_lightning.hyperparameters import (
    ACTING,
    LOSS,
    MODEL_GROUPS,
    NETWORK,
    UPDATE,
    LossHParams,
    NetworkHParams,
    UpdateHParams,
    pick,
    replay_settings,
)
from mrq_lightning.modules.builders import make_acting_policy, make_mrq_networks
from mrq_lightning.objectives.mrq_loss import MRQLoss
from mrq_lightning.training.resume import CKPT_FORMAT, check_module_section, purge_tensorboard_from, restore_csv_history

log = logging.getLogger(__name__)

__all__ = ["MRQ"]

SUPPORTED_PRECISION = ("32-true", "32", "bf16-mixed")
BUDGET_IN_ENV_STEPS = (
    "--trainer.max_steps / min_steps / max_epochs / min_epochs count Lightning optimizer steps and epochs; MR.Q runs "
    "one epoch of data.total_steps env steps. Fix: set the budget with --data.total_steps."
)


def lightning_budget_set(max_steps, min_steps, max_epochs, min_epochs) -> bool:
    """Whether Lightning's own budget differs from MR.Q's one epoch of ``data.total_steps`` env steps."""
    return max_steps not in (-1, None) or min_steps not in (0, None) or max_epochs != 1 or min_epochs not in (None, 0)


def _spread(returns: list[float]) -> float:
    """Sample standard deviation of episode returns (0 for a single episode)."""
    return float(torch.tensor(returns).std()) if len(returns) > 1 else 0.0


class MRQ(LightningModule):
    """MR.Q agent with manual optimization over three AdamW optimizers (encoder, value, policy).

    Defaults are the paper's (algorithm §2.1, declared once in :mod:`mrq_lightning.hyperparameters`). Networks,
    loss and :class:`~mrq_lightning.agent.MRQUpdater` are built in :meth:`setup` from the DataModule's
    ``env_info``; every update goes through the updater.

    Args:
        batch_size: batch for encoder and RL updates.
        gamma: discount.
        target_update_period: RL updates between hard target syncs (and encoder bursts of the same length).
        encoder_horizon: encoder unroll length (the replay window is the longer of the two horizons).
        value_horizon: multi-step return horizon of the value target.
        encoder_lr: AdamW learning rate of the encoder.
        value_lr: AdamW learning rate of the critics.
        policy_lr: AdamW learning rate of the policy.
        weight_decay: AdamW weight decay of all three optimizers (algorithm §15 D2).
        value_grad_clip: max grad norm over both critics.
        exploration_noise: TD3 exploration noise std (halved for discrete actions).
        target_policy_noise: TD3 target policy smoothing noise std (halved for discrete actions).
        target_noise_clip: clip of the target policy noise (halved for discrete actions).
        dynamics_weight: encoder loss weight of the dynamics term.
        reward_weight: encoder loss weight of the reward term.
        terminal_weight: encoder loss weight of the terminal term.
        pre_activation_weight: policy pre-activation penalty.
        lap_alpha: LAP priority exponent (also the replay sampler's).
        min_priority: LAP priority floor (also the replay sampler's).
        zs_dim: state embedding size (algorithm §3).
        za_dim: action embedding size.
        zsa_dim: state-action embedding size.
        hidden_dim: hidden width of the MLPs.
        num_bins: two-hot reward bins.
        gumbel_tau: Gumbel-softmax temperature of the discrete policy.
        official_quirks: the official code's multi-step return (algorithm §16 Q3); linked to
            ``data.official_quirks``.
        log_every_n_env_steps: TensorBoard cadence for training scalars.
        compile: compile the update's losses with ``torch.compile`` (``MRQUpdater(compile=True)``); single
            process only.
    """

    def __init__(
        self,
        batch_size: int = UPDATE.batch_size,
        gamma: float = LOSS.gamma,
        target_update_period: int = UPDATE.target_update_period,
        encoder_horizon: int = UPDATE.encoder_horizon,
        value_horizon: int = UPDATE.value_horizon,
        encoder_lr: float = UPDATE.encoder_lr,
        value_lr: float = UPDATE.value_lr,
        policy_lr: float = UPDATE.policy_lr,
        weight_decay: float = UPDATE.weight_decay,
        value_grad_clip: float = UPDATE.value_grad_clip,
        exploration_noise: float = ACTING.exploration_noise,
        target_policy_noise: float = LOSS.target_policy_noise,
        target_noise_clip: float = LOSS.target_noise_clip,
        dynamics_weight: float = LOSS.dynamics_weight,
        reward_weight: float = LOSS.reward_weight,
        terminal_weight: float = LOSS.terminal_weight,
        pre_activation_weight: float = LOSS.pre_activation_weight,
        lap_alpha: float = LOSS.lap_alpha,
        min_priority: float = LOSS.min_priority,
        zs_dim: int = NETWORK.zs_dim,
        za_dim: int = NETWORK.za_dim,
        zsa_dim: int = NETWORK.zsa_dim,
        hidden_dim: int = NETWORK.hidden_dim,
        num_bins: int = NETWORK.num_bins,
        gumbel_tau: float = NETWORK.gumbel_tau,
        official_quirks: bool = False,
        log_every_n_env_steps: int = 1000,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for group in MODEL_GROUPS:  # refuse bad values now, before any environment starts
            pick(group, self.hparams)
        every = log_every_n_env_steps
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise MRQUserError(f"model.log_every_n_env_steps must be an integer >= 1, got {log_every_n_env_steps!r}")
        self.automatic_optimization = False
        self.loss_module: MRQLoss | None = None
        self.updater: MRQUpdater | None = None
        self.acting_policy: TensorDictModule | None = None
        self.env_steps = 0  # env steps taken (checkpointed); RL updates are counted by the updater
        self._learning = False  # the warm-up is over (recomputed after a resume: it only ever turns true)
        self.last_eval_return = float("nan")
        self.evaluated_at: int | None = None  # env step of the latest evaluation
        self._metrics: dict[str, float | torch.Tensor] = {}
        self._eval_seconds = 0.0
        self._rate_mark: tuple[float, int] | None = None

    # ------------------------------------------------------------------ construction
    def replay_settings(self) -> dict:
        """Replay-buffer arguments these hyperparameters need (window horizon, LAP alpha, minimum priority); the
        DataModule builds its buffer with them, so the buffer always follows the model (algorithm §11)."""
        hp = self.hparams
        return replay_settings(hp.encoder_horizon, hp.value_horizon, hp.lap_alpha, hp.min_priority)

    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision)
        if precision not in SUPPORTED_PRECISION:
            raise MRQUserError(
                f"--trainer.precision {precision} is not supported by MR.Q here; use 32-true (default) or bf16-mixed. "
                "16-mixed would put three optimizers (one clipped) behind one GradScaler and clip scaled gradients "
                "(Lightning #18089); bf16-mixed has fp32's range and needs no scaler. (On CPU Lightning already "
                "turns 16-mixed into bf16-mixed.)"
            )
        trainer = self.trainer
        if self.hparams.compile and trainer.world_size > 1:
            raise MRQUserError(
                f"--model.compile true runs in one process only (not verified under DDP); got {trainer.world_size} "
                "processes. Fix: drop --model.compile, or train on one device."
            )
        if lightning_budget_set(trainer.max_steps, trainer.min_steps, trainer.max_epochs, trainer.min_epochs):
            raise MRQUserError(BUDGET_IN_ENV_STEPS)
        if self.loss_module is not None:
            return
        self.configure_networks(self.trainer.datamodule.env_info)

    def on_fit_start(self) -> None:
        trainer = self.trainer
        # A buffer built for other horizons / LAP settings is refused now, not after the random phase.
        self.updater.check_buffer(trainer.datamodule.buffer)
        world = trainer.world_size
        if world > 1:
            # seed_everything gave every rank the same streams; exploration noise and random actions must differ.
            base = int(os.environ.get("PL_GLOBAL_SEED", trainer.datamodule.seed))
            seed_everything(base + 1000 * trainer.global_rank, verbose=False)
            hp, dm = self.hparams, trainer.datamodule
            rank_zero_info(
                f"MR.Q DDP: {world} ranks, one env + replay buffer each (env seed = seed + 1000 * rank). One update = "
                f"{world} env steps (one per rank), global batch {world} x {hp.batch_size} = {world * hp.batch_size} "
                f"(gradients averaged); data.total_steps={dm.total_steps} and random_steps={dm.random_steps} count "
                f"{'env steps' if not dm.official_quirks else 'env steps and replay slots'} per rank (global budget "
                f"{world * dm.total_steps}); TensorBoard x-axis = per-rank env steps, train/global_env_steps = "
                "world_size x env steps; reward scale = mean over ranks."
            )

    def configure_networks(self, info) -> None:
        """Build networks, loss, updater and acting policy for an environment described by ``info`` (``EnvInfo``)."""
        hp = self.hparams
        nets = make_mrq_networks(
            info.obs_shape, info.action_dim, discrete=info.discrete, pixels=info.pixels,
            **asdict(pick(NetworkHParams, hp)),
        )  # fmt: skip
        self.loss_module = MRQLoss(
            nets.encoder, nets.critic, nets.policy, num_bins=hp.num_bins, official_quirks=hp.official_quirks,
            **asdict(pick(LossHParams, hp)),
        )  # fmt: skip
        self.updater = MRQUpdater(
            self.loss_module, backward=self._backward, reduce_mean=self._mean_over_ranks,
            compile=hp.compile, **asdict(pick(UpdateHParams, hp)),
        )  # fmt: skip
        self.env_info = info
        self.acting_policy = make_acting_policy(nets, hp.exploration_noise)

    def configure_optimizers(self):
        return list(self.updater.optimizers)

    def _backward(self, loss: torch.Tensor) -> None:
        # Lightning's manual_backward applies DDP gradient averaging and the precision plugin.
        if self._trainer is None:
            loss.backward()
        else:
            self.manual_backward(loss)

    def _mean_over_ranks(self, reward_scale: torch.Tensor) -> torch.Tensor:
        """DDP: every rank must use the same r̄, the mean over ranks of each rank's buffer mean."""
        if self._trainer is None or self.trainer.world_size == 1:
            return reward_scale
        return self.trainer.strategy.reduce(reward_scale.detach().to(self.device, torch.float32).clone(), reduce_op="mean")

    @property
    def learning(self) -> bool:
        """The warm-up is over: every env step now runs updates."""
        return self._learning

    @property
    def rl_updates(self) -> int:
        return self.updater.rl_updates if self.updater is not None else 0

    @property
    def timers(self) -> dict[str, float]:
        """Cumulative seconds in replay sampling, encoder updates, value + policy updates and evaluation."""
        updater_timers = self.updater.timers if self.updater is not None else {}
        return {**updater_timers, "eval": self._eval_seconds}

    # ------------------------------------------------------------------ training
    def training_step(self, step_index: int, batch_idx: int) -> None:
        datamodule = self.trainer.datamodule
        buffer = datamodule.buffer
        self.env_steps = int(step_index) + 1
        if self.env_steps == 1 or self._rate_mark is None:
            self._rate_mark = (time.perf_counter(), self.env_steps)
            if step_index == 0:
                self._evaluate(datamodule, at_step=0)

        if self._learning or self._warmup_over(datamodule, buffer):
            # algorithm §9 step 4: encoder burst when due, value and policy updates, priority write-back
            self._metrics.update({metric_tag(k): v for k, v in self.updater.step(buffer).items()})

        if self.env_steps % datamodule.eval_every == 0 or self.env_steps == datamodule.total_steps:
            self._evaluate(datamodule, at_step=self.env_steps)
        if self.env_steps % self.hparams.log_every_n_env_steps == 0:
            self._log_training(datamodule, buffer)

    def _warmup_over(self, datamodule, buffer) -> bool:
        """Whether learning starts now (algorithm §9 step 4). Under DDP with the slot-count rule (§16 Q9) the ranks'
        buffers cross the threshold at different env steps; all ranks start together, once every one has."""
        learns = datamodule.warmup.learns(self.env_steps, len(buffer))
        if datamodule.warmup.official_quirks and self.trainer.world_size > 1:
            learns = self.trainer.strategy.reduce_boolean_decision(learns, all=True)
        self._learning = learns
        return learns

    # ------------------------------------------------------------------ evaluation and logging
    def _evaluate(self, datamodule, at_step: int) -> None:
        if datamodule.eval_episodes == 0 or (self.trainer is not None and not self.trainer.is_global_zero):
            return
        t0 = time.perf_counter()
        was_training = self.training
        self.eval()
        # Evaluation draws from its own copy of the torch RNG (evaluate_policy) and runs in fp32: training is
        # unaffected by when (or whether) it evaluates, so a resumed run matches an uninterrupted one.
        with torch.autocast(self.device.type, enabled=False):
            returns = datamodule.evaluate(self.acting_policy)
            scalars = {"eval/return": mean(returns), "eval/return_std": _spread(returns)}
            if self.env_info.discrete:  # algorithm §16 Q10: the official rule is stochastic; log the greedy one beside it
                scalars["eval/return_greedy"] = mean(datamodule.evaluate(self.acting_policy, ExplorationType.MODE))
        self.train(was_training)
        self.last_eval_return = scalars["eval/return"]
        self.evaluated_at = at_step  # read by the video callback (training/videos.py)
        self._write_scalars(scalars, at_step)
        self._eval_seconds += time.perf_counter() - t0

    def _log_training(self, datamodule, buffer) -> None:
        now = time.perf_counter()
        mark_time, mark_steps = self._rate_mark
        steps_per_s = (self.env_steps - mark_steps) / max(now - mark_time, 1e-9)
        self._rate_mark = (now, self.env_steps)
        scalars = {k: float(v) for k, v in self._metrics.items()}
        scalars.update(
            {
                "perf/steps_per_s": steps_per_s,
                "train/reward_scale": float(self.loss_module.reward_scale),
                "train/target_reward_scale": float(self.loss_module.target_reward_scale),
                "train/rl_updates": self.rl_updates,
                "train/global_env_steps": self.env_steps * (self.trainer.world_size if self.trainer else 1),
                "train/episodes": datamodule.episodes,
                "buffer/size": len(buffer),
            }
        )
        if datamodule.completed_episode_returns:
            scalars["train/episode_return"] = mean(datamodule.completed_episode_returns)
            datamodule.completed_episode_returns.clear()
        self._metrics.clear()
        self.steps_per_s = steps_per_s
        self._write_scalars(scalars, self.env_steps)

    def _write_scalars(self, scalars: dict[str, float], env_step: int) -> None:
        """Write straight to the loggers with env steps as the x-axis (cheaper than ``self.log`` per step)."""
        if self.trainer is None or not self.trainer.is_global_zero:
            return
        clean = {k: float(v) for k, v in scalars.items() if not math.isnan(float(v))}
        for logger in self.trainer.loggers:
            logger.log_metrics(clean, step=env_step)

    # ------------------------------------------------------------------ evaluation of a checkpoint
    def test_step(self, batch, batch_idx: int) -> None:
        """``python -m mrq_lightning test --ckpt_path ...``: evaluation episodes only, no training. Prints every
        episode's return and logs ``test/*`` at the checkpoint's env step (in its run directory)."""
        datamodule = self.trainer.datamodule
        rules = [("return", ExplorationType.DETERMINISTIC)]
        if self.env_info.discrete:  # algorithm §16 Q10: the official rule samples; the greedy one beside it
            rules.append(("return_greedy", ExplorationType.MODE))
        scalars = {}
        for name, rule in rules:
            returns = datamodule.evaluate(self.acting_policy, rule)
            std = _spread(returns)
            scalars[f"test/{name}"] = mean(returns)
            if name == "return":
                scalars["test/return_std"] = std
            rank_zero_info(
                f"MR.Q test {name} at env step {self.env_steps} ({len(returns)} episodes, {datamodule.env_name}, "
                f"{datamodule.eval_protocol}, seed {datamodule.seed + 100}): mean {mean(returns):.4f} ± {std:.4f}; per episode "
                + ", ".join(f"{r:.4f}" for r in returns)
            )
        self._write_scalars(scalars, self.env_steps)
        for key, value in scalars.items():
            self.log(key, value, batch_size=1, logger=False)  # trainer.test()'s return value (logged above by env step)

    # ------------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mrq"] = {
            "format": CKPT_FORMAT,
            "env": self.env_info.name,
            "env_steps": self.env_steps,
            "rl_updates": self.rl_updates,
            "world_size": self.trainer.world_size if self.trainer is not None else 1,
            "last_eval_return": float(self.last_eval_return),
            "pending_metrics": {k: float(v) for k, v in self._metrics.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Validate the checkpoint against this run (clear :class:`CheckpointError`s), then restore the counters."""
        trainer = self.trainer
        path = trainer.ckpt_path if trainer is not None else None
        fitting = trainer is not None and trainer.state.fn == "fit"
        section = check_module_section(
            checkpoint, path=path, env_name=self.env_info.name, hparams=self.hparams, state_dict=self.state_dict(),
            fitting=fitting, data_section=type(trainer.datamodule).__qualname__ if fitting else "",
        )  # fmt: skip
        self.env_steps = int(section["env_steps"])
        self.updater.rl_updates = int(section["rl_updates"])
        self.last_eval_return = float(section.get("last_eval_return", math.nan))
        self._metrics = dict(section.get("pending_metrics", {}))
        # The fit loop restarts: one epoch = the remaining env steps, streamed from the restored env step (restoring
        # Lightning's loop progress would end a finished epoch at once and count the budget in optimizer steps).
        checkpoint.pop("loops", None)
        for logger in trainer.loggers:
            restore_csv_history(logger, self.env_steps if fitting else None)
            if fitting and isinstance(logger, TensorBoardLogger):
                purge_tensorboard_from(logger, self.env_steps + 1)
        if fitting:
            rank_zero_info(f"MR.Q resumes at env step {self.env_steps} ({self.rl_updates} RL updates) from {path}")

"""``MRQ``: the LightningModule. Orchestration only; the algorithm lives in :class:`MRQLoss` (spec §9 schedule).

Per ``training_step`` (= one environment step, already taken and stored by the DataModule):

1. after the random phase, on RL update n with (n - 1) mod 250 == 0: hard target sync, reward-scale refresh,
   then 250 encoder updates on fresh prioritized batches;
2. one value update (grad-norm clip 20), one policy update, and the LAP priority write-back;
3. evaluation every ``eval_every`` env steps; TensorBoard scalars every ``log_every_n_env_steps``.

Every count users see is in environment steps: ``env_steps`` is stored in the checkpoint; Lightning's
``global_step`` counts optimizer steps (about 3 per env step) and is never used as a budget.

Distributed data parallel (``--trainer.devices N --trainer.strategy ddp_find_unused_parameters_true``): every rank
has its own DataModule (env seeded ``seed + 1000 * rank``, its own collector and replay buffer) and its own torch /
numpy / python RNG streams (``seed + 1000 * rank``); one ``training_step`` is one env step *per rank*, so one update
uses N env steps and a global batch of N x ``batch_size`` (DDP averages the gradients; parameters stay identical on
all ranks). The reward scale r̄ is the mean over ranks of each rank's buffer mean, so every rank uses the same one.
``data.total_steps`` counts env steps per rank (the TensorBoard x-axis); ``train/global_env_steps`` = N x env steps.
Evaluation and TensorBoard run on rank 0 only.

Precision: ``32-true`` or ``bf16-mixed`` (autocast around the networks; two-hot, TD targets, reward scaling and
priorities stay fp32 inside :class:`MRQLoss`). ``16-mixed`` on a GPU is refused (see :meth:`setup`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from statistics import mean

import torch
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import ExplorationType

from mrq_lightning.errors import CheckpointError, MRQUserError
from mrq_lightning.modules.builders import MRQActor, make_mrq_networks
from mrq_lightning.objectives.mrq_loss import MRQLoss
from mrq_lightning.training.checkpoint import CKPT_FORMAT

log = logging.getLogger(__name__)

__all__ = ["MRQ"]

SUPPORTED_PRECISION = ("32-true", "32", "bf16-mixed")
# Hyperparameters that may differ between a checkpoint and the run resuming it.
_RESUME_FREE_HPARAMS = {"log_every_n_env_steps"}


def _purge_tensorboard_from(logger: TensorBoardLogger, step: int) -> None:
    """Hide the events a crashed run wrote at env steps >= ``step``; the resumed run writes them again.

    TensorBoard drops every event read so far with a step >= ``step`` when it meets a ``SessionLog.START`` event at
    ``step`` (what ``SummaryWriter(purge_step=...)`` writes). Lightning creates the writer before the checkpoint is
    restored (its setup hook touches ``logger.experiment``), so the event is written into the open file here.
    """
    if logger._experiment is None:
        logger._kwargs["purge_step"] = step
        return
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    logger.experiment._get_file_writer().add_event(
        Event(step=step, wall_time=time.time(), session_log=SessionLog(status=SessionLog.START))
    )


class MRQ(LightningModule):
    """MR.Q agent with manual optimization over three AdamW optimizers (encoder, value, policy).

    Defaults are the paper's (spec §2.1). Networks are built in :meth:`setup` from the DataModule's ``env_info``.

    Args:
        batch_size: batch for encoder and RL updates.
        gamma: discount.
        target_update_period: RL updates between hard target syncs (and encoder bursts of the same length).
        encoder_horizon, value_horizon: encoder unroll length and multi-step return horizon.
        encoder_lr, value_lr, policy_lr, weight_decay: AdamW settings (wd applies to all three, spec D2).
        value_grad_clip: max grad norm over both critics.
        exploration_noise, target_policy_noise, target_noise_clip: TD3 noises (halved for discrete actions).
        dynamics_weight, reward_weight, terminal_weight: encoder loss weights.
        pre_activation_weight: policy pre-activation penalty.
        lap_alpha, min_priority: LAP priority exponent and floor.
        zs_dim, za_dim, zsa_dim, hidden_dim, num_bins, gumbel_tau: architecture (spec §3).
        official_quirks: the official code's multi-step return (spec §16 Q3); linked to ``data.official_quirks``.
        log_every_n_env_steps: TensorBoard cadence for training scalars.
    """

    def __init__(
        self,
        batch_size: int = 256,
        gamma: float = 0.99,
        target_update_period: int = 250,
        encoder_horizon: int = 5,
        value_horizon: int = 3,
        encoder_lr: float = 1e-4,
        value_lr: float = 3e-4,
        policy_lr: float = 3e-4,
        weight_decay: float = 1e-4,
        value_grad_clip: float = 20.0,
        exploration_noise: float = 0.2,
        target_policy_noise: float = 0.2,
        target_noise_clip: float = 0.3,
        dynamics_weight: float = 1.0,
        reward_weight: float = 0.1,
        terminal_weight: float = 0.1,
        pre_activation_weight: float = 1e-5,
        lap_alpha: float = 0.4,
        min_priority: float = 1.0,
        zs_dim: int = 512,
        za_dim: int = 256,
        zsa_dim: int = 512,
        hidden_dim: int = 512,
        num_bins: int = 65,
        gumbel_tau: float = 10.0,
        official_quirks: bool = False,
        log_every_n_env_steps: int = 1000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.loss_module: MRQLoss | None = None
        self.acting_policy: TensorDictModule | None = None
        # Counters (checkpointed): env steps taken, RL (value/policy) updates done.
        self.env_steps = 0
        self.rl_updates = 0
        self.last_eval_return = float("nan")
        self._metrics: dict[str, float] = {}
        self._timers = {"encoder": 0.0, "rl": 0.0, "sample": 0.0, "eval": 0.0}
        self._rate_mark: tuple[float, int] | None = None

    # ------------------------------------------------------------------ construction
    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision)
        if precision not in SUPPORTED_PRECISION:
            raise MRQUserError(
                f"--trainer.precision {precision} is not supported by MR.Q here; use 32-true (default) or bf16-mixed. "
                "16-mixed would put three optimizers (one clipped) behind one GradScaler and clip scaled gradients "
                "(Lightning #18089); bf16-mixed has fp32's range and needs no scaler. (On CPU Lightning already "
                "turns 16-mixed into bf16-mixed.)"
            )
        if self.loss_module is not None:
            return
        info = self.trainer.datamodule.env_info
        self.configure_networks(info)

    def on_fit_start(self) -> None:
        trainer = self.trainer
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
                f"env steps per rank (global budget {world * dm.total_steps}); TensorBoard x-axis = per-rank env "
                "steps, train/global_env_steps = world_size x env steps; reward scale = mean over ranks."
            )

    def configure_networks(self, info) -> None:
        """Build networks and the loss for an environment described by ``info`` (an :class:`EnvInfo`)."""
        hp = self.hparams
        nets = make_mrq_networks(
            info.obs_shape,
            info.action_dim,
            discrete=info.discrete,
            pixels=info.pixels,
            zs_dim=hp.zs_dim,
            za_dim=hp.za_dim,
            zsa_dim=hp.zsa_dim,
            hidden_dim=hp.hidden_dim,
            num_bins=hp.num_bins,
            gumbel_tau=hp.gumbel_tau,
        )
        self.loss_module = MRQLoss(
            nets.encoder,
            nets.critic,
            nets.policy,
            gamma=hp.gamma,
            dynamics_weight=hp.dynamics_weight,
            reward_weight=hp.reward_weight,
            terminal_weight=hp.terminal_weight,
            target_policy_noise=hp.target_policy_noise,
            target_noise_clip=hp.target_noise_clip,
            pre_activation_weight=hp.pre_activation_weight,
            lap_alpha=hp.lap_alpha,
            min_priority=hp.min_priority,
            num_bins=hp.num_bins,
            official_quirks=hp.official_quirks,
        )
        self.env_info = info
        self.acting_policy = TensorDictModule(
            MRQActor(nets.encoder, nets.policy, hp.exploration_noise), in_keys=["observation"], out_keys=["action"]
        )

    def configure_optimizers(self):
        hp, loss = self.hparams, self.loss_module
        # The fused AdamW kernel is the same update as the default foreach one, about 4x faster on CPU
        # (0.9 vs 3-5 ms per encoder step here); it needs fp32 params on CPU/CUDA and no GradScaler (16-mixed).
        fused = self.trainer is None or self.trainer.precision not in ("16-mixed", "16")
        kwargs = {"weight_decay": hp.weight_decay, "fused": fused}
        return [
            torch.optim.AdamW(loss.encoder.parameters(), lr=hp.encoder_lr, **kwargs),
            torch.optim.AdamW(loss.critic.parameters(), lr=hp.value_lr, **kwargs),
            torch.optim.AdamW(loss.policy.parameters(), lr=hp.policy_lr, **kwargs),
        ]

    # ------------------------------------------------------------------ training
    def _optimizer_step(self, optimizer, loss: torch.Tensor, clip: float | None = None) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if clip is not None:
            # What `self.clip_gradients(..., "norm")` does under 32-true, without its precision-plugin dispatch: that
            # refuses fused optimizers under any *-mixed precision, although bf16-mixed has no GradScaler (gradients
            # are never scaled here; 16-mixed, which would scale them, is refused in `setup`). Also ~70 µs cheaper.
            torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip)
        optimizer.step()

    def _on_device(self, batch: TensorDict) -> TensorDict:
        """Replay kept on another device than the networks (``--data.buffer_device cpu`` on a GPU): move the batch."""
        return batch if batch.device == self.device else batch.to(self.device, non_blocking=True)

    def training_step(self, step_index: int, batch_idx: int) -> None:
        datamodule = self.trainer.datamodule
        buffer = datamodule.buffer
        hp = self.hparams
        self.env_steps = int(step_index) + 1
        if self.env_steps == 1 or self._rate_mark is None:
            self._rate_mark = (time.perf_counter(), self.env_steps)
            if step_index == 0:
                self._evaluate(datamodule, at_step=0)

        if self.env_steps > datamodule.random_steps:
            opt_encoder, opt_value, opt_policy = self.optimizers()
            if self.rl_updates % hp.target_update_period == 0:
                self._encoder_burst(buffer, opt_encoder)
            t0 = time.perf_counter()
            batch = self._on_device(buffer.sample(hp.batch_size, horizon=hp.value_horizon, include_intermediate=False))
            t1 = time.perf_counter()
            value_loss, value_metrics = self.loss_module.value_loss(batch)
            self._optimizer_step(opt_value, value_loss, hp.value_grad_clip)
            policy_loss, policy_metrics = self.loss_module.actor_loss(batch)
            self._optimizer_step(opt_policy, policy_loss)
            buffer.update_priority(batch.get("index"), batch.get(self.loss_module.tensor_keys.priority))
            self.rl_updates += 1
            self._timers["sample"] += t1 - t0
            self._timers["rl"] += time.perf_counter() - t1
            if self.env_steps % hp.log_every_n_env_steps == 0:
                self._metrics.update({f"loss/{k[5:]}" if k.startswith("loss_") else f"train/{k}": v
                                      for k, v in (value_metrics.update(policy_metrics)).items()})

        if self.env_steps % datamodule.eval_every == 0 or self.env_steps == datamodule.total_steps:
            self._evaluate(datamodule, at_step=self.env_steps)
        if self.env_steps % hp.log_every_n_env_steps == 0:
            self._log_training(datamodule, buffer)

    def _encoder_burst(self, buffer, optimizer) -> None:
        """Target sync + reward-scale refresh + ``target_update_period`` encoder updates (spec §9 step 4)."""
        hp = self.hparams
        t0 = time.perf_counter()
        reward_scale = buffer.reward_scale()
        if self.trainer is not None and self.trainer.world_size > 1:
            # Every rank must use the same r̄: the mean over ranks of each rank's buffer mean.
            reward_scale = self.trainer.strategy.reduce(
                reward_scale.detach().to(self.device, torch.float32).clone(), reduce_op="mean"
            )
        self.loss_module.sync_targets(reward_scale)
        sample_time = 0.0
        for _ in range(hp.target_update_period):
            s0 = time.perf_counter()
            batch = self._on_device(buffer.sample(hp.batch_size, horizon=hp.encoder_horizon, include_intermediate=True))
            sample_time += time.perf_counter() - s0
            loss, metrics = self.loss_module.encoder_loss(batch, env_terminates=buffer.env_terminates)
            self._optimizer_step(optimizer, loss)
        self._metrics.update({f"loss/{k[5:]}": v for k, v in metrics.items()})
        self._timers["sample"] += sample_time
        self._timers["encoder"] += time.perf_counter() - t0 - sample_time

    # ------------------------------------------------------------------ evaluation and logging
    def _evaluate(self, datamodule, at_step: int) -> None:
        if datamodule.eval_episodes == 0 or (self.trainer is not None and not self.trainer.is_global_zero):
            return
        t0 = time.perf_counter()
        was_training = self.training
        self.eval()
        # Evaluation draws from its own copy of the torch RNG and runs in fp32: training is unaffected by when (or
        # whether) it evaluates, so a resumed run matches an uninterrupted one whatever the eval schedule.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.autocast(self.device.type, enabled=False):
            returns = datamodule.evaluate(self.acting_policy)
            scalars = {"eval/return": mean(returns), "eval/return_std": float(torch.tensor(returns).std()) if len(returns) > 1 else 0.0}
            if self.env_info.discrete:  # spec §16 Q10: the official rule is stochastic; log the greedy one beside it
                scalars["eval/return_greedy"] = mean(datamodule.evaluate(self.acting_policy, ExplorationType.MODE))
        self.train(was_training)
        self.last_eval_return = scalars["eval/return"]
        self._write_scalars(scalars, at_step)
        self._timers["eval"] += time.perf_counter() - t0

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
        """``python -m mrq_lightning test --ckpt_path ...``: evaluation episodes only, no training."""
        datamodule = self.trainer.datamodule
        returns = datamodule.evaluate(self.acting_policy)
        self.log("test/return", mean(returns), batch_size=1)
        self.log("test/return_std", float(torch.tensor(returns).std()) if len(returns) > 1 else 0.0, batch_size=1)
        if self.env_info.discrete:
            self.log("test/return_greedy", mean(datamodule.evaluate(self.acting_policy, ExplorationType.MODE)), batch_size=1)

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
        fresh = "drop --ckpt_path to start a fresh run"
        state = checkpoint.get("mrq")
        if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
            raise CheckpointError(
                f"checkpoint {path} was not written by mrq_lightning's trainer (no {CKPT_FORMAT!r} section). Fix: pass "
                f"a checkpoint saved by `python -m mrq_lightning fit` (e.g. --ckpt_path last), or {fresh}."
            )
        if state["env"] != self.env_info.name:
            raise CheckpointError(
                f"checkpoint {path} was trained on {state['env']}, this run is configured for {self.env_info.name}. "
                f"Fix: pass --data.env {state['env']} with the original config to resume it, or {fresh}."
            )
        if fitting and type(trainer.datamodule).__qualname__ not in checkpoint:
            raise CheckpointError(
                f"checkpoint {path} has no {type(trainer.datamodule).__qualname__} state (replay sidecar, env state); "
                f"it cannot resume training. Fix: resume from a checkpoint written by `fit`, or {fresh}."
            )
        saved_hp = checkpoint.get("hyper_parameters", {})
        diffs = [f"model.{k}: checkpoint {saved_hp.get(k)!r}, now {v!r}" for k, v in self.hparams.items()
                 if k not in _RESUME_FREE_HPARAMS and k in saved_hp and saved_hp[k] != v]  # fmt: skip
        own = self.state_dict()
        saved_sd = checkpoint.get("state_dict", {})
        shapes = [f"{k}: checkpoint {tuple(v.shape)}, now {tuple(own[k].shape) if k in own else 'absent'}"
                  for k, v in saved_sd.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]  # fmt: skip
        shapes += [f"{k}: missing from the checkpoint" for k in own if k not in saved_sd]
        if shapes or (fitting and diffs):
            details = "; ".join((diffs + shapes)[:8]) + (" ..." if len(diffs + shapes) > 8 else "")
            raise CheckpointError(
                f"checkpoint {path} was written with a different model configuration ({details}). Fix: use the same "
                f"--config files and overrides as the run that wrote it, or {fresh}."
            )
        self.env_steps = int(state["env_steps"])
        self.rl_updates = int(state["rl_updates"])
        self.last_eval_return = float(state.get("last_eval_return", math.nan))
        self._metrics = dict(state.get("pending_metrics", {}))
        # The fit loop restarts: one epoch = the remaining env steps, streamed from the restored env step (restoring
        # Lightning's loop progress would end a finished epoch at once and count the budget in optimizer steps).
        checkpoint.pop("loops", None)
        if fitting:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    _purge_tensorboard_from(logger, self.env_steps + 1)
            rank_zero_info(f"MR.Q resumes at env step {self.env_steps} ({self.rl_updates} RL updates) from {path}")

"""``MRQ``: the LightningModule. Orchestration only; the algorithm lives in :class:`MRQLoss` (spec §9 schedule).

Per ``training_step`` (= one environment step, already taken and stored by the DataModule):

1. after the random phase, on RL update n with (n - 1) mod 250 == 0: hard target sync, reward-scale refresh,
   then 250 encoder updates on fresh prioritized batches;
2. one value update (grad-norm clip 20), one policy update, and the LAP priority write-back;
3. evaluation every ``eval_every`` env steps; TensorBoard scalars every ``log_every_n_env_steps``.

Every count users see is in environment steps: ``env_steps`` is stored in the checkpoint; Lightning's
``global_step`` counts optimizer steps (about 3 per env step) and is never used as a budget.
"""

from __future__ import annotations

import math
import time
from statistics import mean

import torch
from lightning.pytorch import LightningModule
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import ExplorationType

from mrq_lightning.modules.builders import MRQActor, make_mrq_networks
from mrq_lightning.objectives.mrq_loss import MRQLoss

__all__ = ["MRQ"]


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
        if self.loss_module is not None:
            return
        info = self.trainer.datamodule.env_info
        self.configure_networks(info)

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
        return [
            torch.optim.AdamW(loss.encoder.parameters(), lr=hp.encoder_lr, weight_decay=hp.weight_decay),
            torch.optim.AdamW(loss.critic.parameters(), lr=hp.value_lr, weight_decay=hp.weight_decay),
            torch.optim.AdamW(loss.policy.parameters(), lr=hp.policy_lr, weight_decay=hp.weight_decay),
        ]

    # ------------------------------------------------------------------ training
    def _optimizer_step(self, optimizer, loss: torch.Tensor, clip: float | None = None) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        optimizer.step()

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
            batch = buffer.sample(hp.batch_size, horizon=hp.value_horizon, include_intermediate=False)
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
        self.loss_module.sync_targets(buffer.reward_scale())
        sample_time = 0.0
        for _ in range(hp.target_update_period):
            s0 = time.perf_counter()
            batch = buffer.sample(hp.batch_size, horizon=hp.encoder_horizon, include_intermediate=True)
            sample_time += time.perf_counter() - s0
            loss, metrics = self.loss_module.encoder_loss(batch, env_terminates=buffer.env_terminates)
            self._optimizer_step(optimizer, loss)
        self._metrics.update({f"loss/{k[5:]}": v for k, v in metrics.items()})
        self._timers["sample"] += sample_time
        self._timers["encoder"] += time.perf_counter() - t0 - sample_time

    # ------------------------------------------------------------------ evaluation and logging
    def _evaluate(self, datamodule, at_step: int) -> None:
        if datamodule.eval_episodes == 0:
            return
        t0 = time.perf_counter()
        was_training = self.training
        self.eval()
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
        checkpoint["mrq"] = {"env_steps": self.env_steps, "rl_updates": self.rl_updates, "env": self.env_info.name}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("mrq", {})
        self.env_steps = state.get("env_steps", 0)
        self.rl_updates = state.get("rl_updates", 0)

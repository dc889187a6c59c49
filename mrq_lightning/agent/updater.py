"""``MRQUpdater``: one environment step's worth of MR.Q updates, in any training loop (algorithm §9).

The updater owns what turns :class:`~mrq_lightning.objectives.mrq_loss.MRQLoss` into MR.Q's training procedure:

* three AdamW optimizers, encoder / value / policy, weight decay on all three (algorithm §3.9, §15 D2), fused
  kernels where the device has them;
* the schedule, counted in RL updates: before RL update n with (n - 1) mod ``target_update_period`` == 0, a hard
  target sync with a reward-scale refresh, then ``target_update_period`` encoder updates on fresh batches of
  horizon ``encoder_horizon``; then one value update (gradient norm clipped to ``value_grad_clip`` over both
  critics, nothing else clipped), one policy update on the same batch, and the LAP priority write-back;
* its state (optimizers, RL-update counter, reward scales) through :meth:`state_dict` / :meth:`load_state_dict`;
* optionally (``compile=True``) the three losses, forward and backward, compiled by ``torch.compile`` (TorchInductor);
  the optimizer steps stay the fused AdamW kernels, and the random numbers are torch's, as in the eager update. Where compiling fails (no C++ compiler, an unsupported
  platform) the update says so in one line and runs eagerly.

It imports no training framework. A framework plugs in through two hooks: ``backward`` (Lightning passes
``manual_backward``, which applies DDP gradient averaging and precision handling) and ``reduce_mean`` (DDP: every
rank must use the same reward scale, the mean of the ranks' buffer means).

Example (a plain TorchRL loop; see ``examples/train_mrq_torchrl.py``)::

    updater = MRQUpdater(loss)
    buffer = MRQReplayBuffer(obs_shape=..., action_dim=..., **updater.replay_settings())
    for env_step, transition in enumerate(collector, start=1):
        buffer.extend(transition)
        if warmup.learns(env_step, len(buffer)):
            metrics = updater.step(buffer)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDictBase

from mrq_lightning.errors import ConfigurationError
from mrq_lightning.hyperparameters import UPDATE, UpdateHParams, replay_settings
from mrq_lightning.objectives.mrq_loss import MRQLoss
from mrq_lightning.third_party import torch_compiler_errors

__all__ = ["MRQUpdater", "metric_tag"]

log = logging.getLogger(__name__)

_STATE_FORMAT = "mrq_lightning.updater/1"
_LOSSES = {"encoder": "encoder_loss", "value": "value_loss", "policy": "actor_loss"}  # MRQLoss methods by update


def metric_tag(name: str) -> str:
    """The logging tag of a :meth:`MRQUpdater.step` metric: ``loss_value`` -> ``loss/value``, ``q_mean`` ->
    ``train/q_mean`` (what ``fit`` writes to TensorBoard)."""
    return f"loss/{name[5:]}" if name.startswith("loss_") else f"train/{name}"


def _default_backward(loss: torch.Tensor) -> None:
    loss.backward()


def _adamw(params, lr: float, weight_decay: float, fused: bool | None) -> torch.optim.AdamW:
    """AdamW with the fused kernel where the device has one (the same update, ~4x faster on CPU than foreach)."""
    params = list(params)
    if fused is None:
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError:  # parameters on a device without a fused AdamW kernel
            fused = False
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


class MRQUpdater:
    """MR.Q's update (algorithm §9): call :meth:`step` once per environment step after the random phase.

    Args:
        loss: the :class:`MRQLoss` holding the online and target networks and the reward scales.
        batch_size: batch of every encoder and RL update.
        target_update_period: RL updates between target syncs, and the length of each encoder burst.
        encoder_horizon, value_horizon: window lengths of encoder and value batches.
        encoder_lr, value_lr, policy_lr, weight_decay: AdamW settings (algorithm §2.1).
        value_grad_clip: maximum gradient norm over both critics' parameters.
        fused: use the fused AdamW kernel; ``None`` = where the parameters' device has one.
        compile: compile the encoder, value and policy losses (forward and backward) with ``torch.compile``. The
            first calls compile (about a minute per loss on a 2-core CPU); the results equal the eager update's up
            to floating-point reassociation (tests/test_compile.py).
        backward: ``backward(loss)``; default ``loss.backward()``.
        reduce_mean: maps this process's reward scale to the value all processes use; default: itself.
    """

    def __init__(
        self,
        loss: MRQLoss,
        *,
        batch_size: int = UPDATE.batch_size,
        target_update_period: int = UPDATE.target_update_period,
        encoder_horizon: int = UPDATE.encoder_horizon,
        value_horizon: int = UPDATE.value_horizon,
        encoder_lr: float = UPDATE.encoder_lr,
        value_lr: float = UPDATE.value_lr,
        policy_lr: float = UPDATE.policy_lr,
        weight_decay: float = UPDATE.weight_decay,
        value_grad_clip: float = UPDATE.value_grad_clip,
        fused: bool | None = None,
        backward: Callable[[torch.Tensor], Any] | None = None,
        reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
        compile: bool = False,
    ) -> None:
        self.hparams = UpdateHParams(
            batch_size=batch_size, target_update_period=target_update_period, encoder_horizon=encoder_horizon,
            value_horizon=value_horizon, encoder_lr=encoder_lr, value_lr=value_lr, policy_lr=policy_lr,
            weight_decay=weight_decay, value_grad_clip=value_grad_clip,
        )  # fmt: skip  (validates every value)
        self.loss = loss
        self.encoder_optimizer = _adamw(loss.encoder.parameters(), encoder_lr, weight_decay, fused)
        self.value_optimizer = _adamw(loss.critic.parameters(), value_lr, weight_decay, fused)
        self.policy_optimizer = _adamw(loss.policy.parameters(), policy_lr, weight_decay, fused)
        # The clipped set (both critics), listed once rather than on every value step.
        self._clipped_params = [p for group in self.value_optimizer.param_groups for p in group["params"]]
        self.backward = backward or _default_backward
        self.reduce_mean = reduce_mean
        self.rl_updates = 0
        # Seconds spent per part, cumulative (read by benchmarks/throughput.py; costs two clock reads per part).
        self.timers = {"sample": 0.0, "encoder": 0.0, "rl": 0.0}
        self._checked_buffer: int | None = None
        self.compiled = compile
        self._losses: dict[str, Callable] = {}
        if compile:
            # fallback_random: the target-policy noise comes from torch's generator as in the eager update (Inductor
            # would otherwise draw its own), so compiled and eager runs of one seed see the same random numbers.
            options = {"fallback_random": True}
            self._losses = {name: torch.compile(getattr(loss, method), options=options) for name, method in _LOSSES.items()}

    # ------------------------------------------------------------------ configuration
    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, torch.optim.Optimizer]:
        """``(encoder, value, policy)`` optimizers."""
        return self.encoder_optimizer, self.value_optimizer, self.policy_optimizer

    def replay_settings(self) -> dict[str, Any]:
        """The :class:`~mrq_lightning.data.MRQReplayBuffer` arguments this update needs: the window ``horizon``
        (the longer of the two horizons), LAP ``alpha`` and ``min_priority`` (algorithm §8, §11)."""
        hp = self.hparams
        return replay_settings(hp.encoder_horizon, hp.value_horizon, self.loss.lap_alpha, self.loss.min_priority)

    def check_buffer(self, buffer) -> None:
        """Refuse a buffer whose window, LAP alpha or minimum priority differ from this update's (one line)."""
        wanted = self.replay_settings()
        have = {"horizon": buffer.horizon, "alpha": buffer.alpha, "min_priority": buffer.min_priority}
        if have != wanted:  # a longer window would also change which starts are valid (algorithm §11)
            raise ConfigurationError(
                f"the replay buffer was built with {have}, MR.Q's update needs {wanted}. Fix: build it with "
                "MRQReplayBuffer(..., **updater.replay_settings())."
            )

    # ------------------------------------------------------------------ the update
    @property
    def encoder_burst_due(self) -> bool:
        """The next :meth:`step` starts with a target sync and ``target_update_period`` encoder updates."""
        return self.rl_updates % self.hparams.target_update_period == 0

    def step(self, buffer) -> dict[str, torch.Tensor]:
        """One environment step's worth of updates on ``buffer``; returns detached 0-d metric tensors.

        Keys: ``loss_value, q_mean, q_max, target_mean, priority_mean, loss_policy, policy_q, pre_activation_sq``
        every call, and ``loss_encoder, loss_dynamics, loss_reward, loss_terminal`` (of the last encoder update)
        on calls that ran an encoder burst. Nothing is read back to the host here except by the LAP sampler, which
        reads its total priority mass once per change of the buffer.
        """
        if self._checked_buffer != id(buffer):
            self.check_buffer(buffer)
            self._checked_buffer = id(buffer)
        hp, loss = self.hparams, self.loss
        metrics: dict[str, torch.Tensor] = {}
        if self.encoder_burst_due:
            metrics.update(self._encoder_burst(buffer))
        t0 = time.perf_counter()
        batch = self._sample(buffer, hp.value_horizon, include_intermediate=False)
        t1 = time.perf_counter()
        value_metrics = self._update("value", self.value_optimizer, batch, clip=hp.value_grad_clip)  # the critics only
        policy_metrics = self._update("policy", self.policy_optimizer, batch)
        buffer.update_priority(batch.get("index"), batch.get(loss.tensor_keys.priority))
        self.rl_updates += 1
        self.timers["sample"] += t1 - t0
        self.timers["rl"] += time.perf_counter() - t1
        metrics.update(value_metrics.items())
        metrics.update(policy_metrics.items())
        return metrics

    def _encoder_burst(self, buffer) -> dict[str, torch.Tensor]:
        """Target sync + reward-scale refresh + ``target_update_period`` encoder updates (algorithm §9 step 4)."""
        hp, loss = self.hparams, self.loss
        t0 = time.perf_counter()
        reward_scale = buffer.reward_scale()
        if self.reduce_mean is not None:
            reward_scale = self.reduce_mean(reward_scale)
        loss.sync_targets(reward_scale)
        sample_time = 0.0
        metrics: TensorDictBase | None = None
        for _ in range(hp.target_update_period):
            s0 = time.perf_counter()
            batch = self._sample(buffer, hp.encoder_horizon, include_intermediate=True)
            sample_time += time.perf_counter() - s0
            metrics = self._update("encoder", self.encoder_optimizer, batch, env_terminates=buffer.env_terminates)
        self.timers["sample"] += sample_time
        self.timers["encoder"] += time.perf_counter() - t0 - sample_time
        return dict(metrics.items())

    def _update(self, name: str, optimizer, batch, clip: float | None = None, **loss_kwargs) -> TensorDictBase:
        """Compute the named loss (compiled when asked for) and step its optimizer; returns the loss's metrics.

        Compilation happens at the first forward and, lazily, at the first backward: a compiler failure at either
        switches to the eager losses for good (one warning line) and redoes this update eagerly. Errors of the
        update itself (shapes, memory) are raised as they are."""
        if not self.compiled:
            loss, metrics = getattr(self.loss, _LOSSES[name])(batch, **loss_kwargs)
            self._optimizer_step(optimizer, loss, clip=clip)
            return metrics
        try:
            loss, metrics = self._losses[name](batch, **loss_kwargs)
            self._optimizer_step(optimizer, loss, clip=clip)
            return metrics
        except torch_compiler_errors() as err:
            self.compiled = False
            first_line = (str(err).strip().splitlines() or [""])[0]
            log.warning("compile=True: torch.compile failed (%s: %s); the update runs eagerly", type(err).__name__, first_line)
            return self._update(name, optimizer, batch, clip=clip, **loss_kwargs)

    def _sample(self, buffer, horizon: int, include_intermediate: bool) -> TensorDictBase:
        batch = buffer.sample(self.hparams.batch_size, horizon=horizon, include_intermediate=include_intermediate)
        device = self.loss.reward_scale.device
        # Replay kept on another device than the networks (e.g. pixels on the CPU, networks on a GPU).
        return batch if batch.device == device else batch.to(device, non_blocking=True)

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float | None = None) -> None:
        """zero_grad, backward, then (value step only: ``clip`` given) clip the critics' gradient norm, step."""
        optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(self._clipped_params, clip)
        optimizer.step()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Optimizer states, the RL-update counter and both reward scales (the networks belong to the loss)."""
        return {
            "format": _STATE_FORMAT,
            "rl_updates": self.rl_updates,
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "reward_scale": self.loss.reward_scale.detach().clone(),
            "target_reward_scale": self.loss.target_reward_scale.detach().clone(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or state_dict.get("format") != _STATE_FORMAT:
            raise ValueError(f"not an MRQUpdater state (expected format {_STATE_FORMAT!r})")
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"], strict=True):
            optimizer.load_state_dict(state)
        self.rl_updates = int(state_dict["rl_updates"])
        self.loss.reward_scale.copy_(state_dict["reward_scale"])
        self.loss.target_reward_scale.copy_(state_dict["target_reward_scale"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hparams}, rl_updates={self.rl_updates})"

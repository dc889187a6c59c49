"""``MRQLoss``: MR.Q's three objectives as a TorchRL ``LossModule`` (algorithm §5-§7, §9).

The loss owns the online networks (encoder, twin critic, policy), their hard-copied targets and the two reward
scales. Each sub-loss is its own method returning ``(loss, metrics)`` so that a training loop can step three
separate optimizers, as MR.Q requires:

* :meth:`MRQLoss.encoder_loss` on an encoder-mode batch (horizon 5 with intermediate next states),
* :meth:`MRQLoss.value_loss` on a value-mode batch (horizon 3); it also writes LAP priorities into the batch,
* :meth:`MRQLoss.actor_loss` on the same value batch, right after the value step.

:meth:`MRQLoss.sync_targets` performs the every-250-updates hard copy and reward-scale refresh (algorithm §9).

Input keys (rename with :meth:`set_keys`), batch size ``[B]``:

=========================  ===============================  ============================================
key (``tensor_keys.*``)    shape                            meaning
=========================  ===============================  ============================================
``observation``            ``[B, *state]``                  s_j
``action``                 ``[B, H, A]``                    a_j ... a_{j+H-1}
``reward``                 ``[B, H]``                       r_j ... (raw, per agent step)
``terminated``             ``[B, H]``                       1 - not_done
``next_observation``       ``[B, H, *state]`` or ``[B, *state]``  successor states (all H, or only s_{j+H})
``priority`` (output)      ``[B]``                          written by :meth:`value_loss`
``state_embedding`` (out)  ``[B, 512]``                     z_s of s_j, written by :meth:`value_loss`, reused by
                                                            :meth:`actor_loss` (algorithm §7)
=========================  ===============================  ============================================
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule

from mrq_lightning import functional as MF
from mrq_lightning.hyperparameters import LOSS, NETWORK, LossHParams
from mrq_lightning.modules.networks import Encoder, Policy, TwinCritic

__all__ = ["MRQLoss"]


@contextlib.contextmanager
def _no_param_grad(*modules: nn.Module):
    """Build the graph without tracking these modules' parameters: gradients still flow *through* the modules
    into their inputs, but none is deposited in their parameters (algorithm §7's framework note)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class MRQLoss(LossModule):
    """MR.Q encoder, value and policy objectives.

    Args:
        encoder: the model-based representation (f, g with the action embedding, and the linear MDP head).
        critic: twin value network on z_sa.
        policy: deterministic (tanh) or Gumbel-softmax policy on z_s.
        gamma: discount.
        dynamics_weight, reward_weight, terminal_weight: encoder loss weights (1.0, 0.1, 0.1).
        target_policy_noise, target_noise_clip: TD3 target smoothing (0.2, 0.3); halved for discrete policies.
        pre_activation_weight: policy pre-activation penalty (1e-5).
        lap_alpha, min_priority: LAP priority exponent and floor (0.4, 1.0).
        num_bins, bin_range: symexp two-hot reward bins (65 over [-10, 10] before symexp).
        official_quirks: use the official code's multi-step return (algorithm §16 Q3) instead of the paper's.

    Examples:
        >>> from mrq_lightning.modules.networks import Encoder, TwinCritic, Policy
        >>> loss = MRQLoss(Encoder((17,), 6), TwinCritic(), Policy(6))
        >>> sorted(loss.tensor_keys.__dataclass_fields__)[:3]
        ['action', 'next_observation', 'observation']
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys; see the module docstring."""

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        reward: NestedKey = ("next", "reward")
        terminated: NestedKey = ("next", "terminated")
        next_observation: NestedKey = ("next", "observation")
        priority: NestedKey = "priority"
        state_embedding: NestedKey = "state_embedding"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        encoder: Encoder,
        critic: TwinCritic,
        policy: Policy,
        *,
        gamma: float = LOSS.gamma,
        dynamics_weight: float = LOSS.dynamics_weight,
        reward_weight: float = LOSS.reward_weight,
        terminal_weight: float = LOSS.terminal_weight,
        target_policy_noise: float = LOSS.target_policy_noise,
        target_noise_clip: float = LOSS.target_noise_clip,
        pre_activation_weight: float = LOSS.pre_activation_weight,
        lap_alpha: float = LOSS.lap_alpha,
        min_priority: float = LOSS.min_priority,
        num_bins: int = NETWORK.num_bins,
        bin_range: float = 10.0,
        official_quirks: bool = False,
    ) -> None:
        super().__init__()
        LossHParams(
            gamma=gamma, dynamics_weight=dynamics_weight, reward_weight=reward_weight, terminal_weight=terminal_weight,
            target_policy_noise=target_policy_noise, target_noise_clip=target_noise_clip,
            pre_activation_weight=pre_activation_weight, lap_alpha=lap_alpha, min_priority=min_priority,
        )  # fmt: skip  (validates every value)
        self.encoder = encoder
        self.critic = critic
        self.policy = policy
        # Targets are plain deep copies, hard-synced by `sync_targets` (algorithm §3.9). The leading underscore keeps
        # them out of LossModule.parameters(), so no optimizer built from the loss ever sees them.
        self._target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self._target_critic = copy.deepcopy(critic).requires_grad_(False)
        self._target_policy = copy.deepcopy(policy).requires_grad_(False)

        self.discrete = bool(policy.discrete)
        noise_scale = 0.5 if self.discrete else 1.0  # algorithm §2.1: discrete noises are halved
        self.gamma = gamma
        self.dynamics_weight = dynamics_weight
        self.reward_weight = reward_weight
        self.terminal_weight = terminal_weight
        self.target_policy_noise = target_policy_noise * noise_scale
        self.target_noise_clip = target_noise_clip * noise_scale
        self.pre_activation_weight = pre_activation_weight
        self.lap_alpha = lap_alpha
        self.min_priority = min_priority
        self.official_quirks = official_quirks
        self.register_buffer("reward_bins", MF.two_hot_bins(num_bins, -bin_range, bin_range))
        # r̄ starts at 1 and r̄' at 0; the first sync sets r̄' = 1 (algorithm §9).
        self.register_buffer("reward_scale", torch.ones(()))
        self.register_buffer("target_reward_scale", torch.zeros(()))

    # ------------------------------------------------------------------ targets
    @property
    def target_encoder(self) -> Encoder:
        return self._target_encoder

    @property
    def target_critic(self) -> TwinCritic:
        return self._target_critic

    @property
    def target_policy(self) -> Policy:
        return self._target_policy

    @torch.no_grad()
    def sync_targets(self, reward_scale: float | torch.Tensor | None = None) -> None:
        """Hard-copy encoder, critic and policy into their targets; r̄' <- r̄; r̄ <- max(reward_scale, 1e-8).

        Called before the first RL update and then every 250 updates, right before the encoder burst (algorithm §9).
        """
        for online, target in (
            (self.encoder, self._target_encoder),
            (self.critic, self._target_critic),
            (self.policy, self._target_policy),
        ):
            for p_target, p_online in zip(target.parameters(), online.parameters()):
                p_target.copy_(p_online)
            for b_target, b_online in zip(target.buffers(), online.buffers()):
                b_target.copy_(b_online)
        self.target_reward_scale.copy_(self.reward_scale)
        if reward_scale is not None:
            self.reward_scale.copy_(torch.as_tensor(reward_scale, dtype=torch.float32).clamp(min=1e-8))

    # ------------------------------------------------------------------ encoder (algorithm §5)
    def encoder_loss(self, tensordict: TensorDictBase, env_terminates: bool = True) -> tuple[torch.Tensor, TensorDict]:
        """Model-based representation loss, unrolled over the batch's horizon with termination masks.

        Args:
            tensordict: encoder-mode batch: ``next_observation`` must hold all H successor states.
            env_terminates: include the terminal loss (the buffer's flag: true once any termination was stored).
        """
        keys = self.tensor_keys
        obs = tensordict.get(keys.observation)
        actions = tensordict.get(keys.action)
        rewards = tensordict.get(keys.reward)
        terminated = tensordict.get(keys.terminated).to(torch.float32)
        next_obs = tensordict.get(keys.next_observation)
        horizon = actions.shape[1]

        with torch.no_grad():
            target_zs = self._target_encoder.encode_state(next_obs)  # [B, H, zs]
        # mu_0 = 1, mu_{i+1} = mu_i * n_i: a step counts when no terminal happened strictly before it.
        not_done = 1.0 - terminated
        mask = torch.cumprod(torch.cat([torch.ones_like(not_done[:, :1]), not_done[:, :-1]], 1), 1)  # [B, H]

        zs = self.encoder.encode_state(obs)
        pred_done, pred_zs, pred_reward = [], [], []
        for i in range(horizon):
            zsa = self.encoder.encode_state_action(zs, actions[:, i])
            done_i, zs, reward_i = self.encoder.predict(zsa)  # raw next-state prediction feeds the next step
            pred_done.append(done_i)
            pred_zs.append(zs)
            pred_reward.append(reward_i)
        pred_done = torch.cat(pred_done, 1).float()  # [B, H]
        pred_zs = torch.stack(pred_zs, 1)  # [B, H, zs]
        pred_reward = torch.stack(pred_reward, 1)  # [B, H, bins]

        # Masked means divide by the full count (algorithm §5); summing the H per-step means = H * mean over [B, H].
        dynamics = (((pred_zs.float() - target_zs.float()) ** 2) * mask.unsqueeze(-1)).mean() * horizon
        reward_ce = MF.two_hot_cross_entropy(pred_reward, rewards, self.reward_bins).squeeze(-1)
        reward = (reward_ce * mask).mean() * horizon
        terminal = (((pred_done - terminated) ** 2) * mask).mean() * horizon
        loss = self.dynamics_weight * dynamics + self.reward_weight * reward
        if env_terminates:
            loss = loss + self.terminal_weight * terminal
        metrics = TensorDict(
            {
                "loss_encoder": loss.detach(),
                "loss_dynamics": dynamics.detach(),
                "loss_reward": reward.detach(),
                "loss_terminal": terminal.detach(),
            },
            batch_size=[],
        )
        return loss, metrics

    # ------------------------------------------------------------------ value (algorithm §6)
    def _value_batch(self, tensordict: TensorDictBase, horizon: int | None = None):
        keys = self.tensor_keys
        obs = tensordict.get(keys.observation)
        actions = tensordict.get(keys.action)
        rewards = tensordict.get(keys.reward)
        terminated = tensordict.get(keys.terminated)
        next_obs = tensordict.get(keys.next_observation)
        horizon = horizon or rewards.shape[1]
        if next_obs.dim() == obs.dim() + 1:  # an encoder-mode batch: bootstrap from position horizon - 1
            next_obs = next_obs[:, horizon - 1]
        return obs, actions[:, 0], rewards[:, :horizon], terminated[:, :horizon].to(torch.float32), next_obs

    def value_loss(self, tensordict: TensorDictBase, horizon: int | None = None) -> tuple[torch.Tensor, TensorDict]:
        """Huber TD loss of both critics against the scaled multi-step TD3 target.

        Writes ``priority`` (LAP, from the Q values before the optimizer step) and ``state_embedding`` (z_s of s_j,
        no grad) into ``tensordict`` for the priority update and :meth:`actor_loss`.

        Args:
            tensordict: value-mode batch (or an encoder-mode batch, of which the first ``horizon`` steps are used).
            horizon: multi-step horizon; defaults to the batch's reward length.
        """
        obs, action, rewards, terminated, next_obs = self._value_batch(tensordict, horizon)
        horizon = rewards.shape[1]
        with torch.no_grad():
            next_zs = self._target_encoder.encode_state(next_obs)
            next_action, _ = self._target_policy(next_zs)
            noise = (torch.randn_like(next_action) * self.target_policy_noise).clamp(
                -self.target_noise_clip, self.target_noise_clip
            )
            next_action = MF.realign_action(next_action + noise, self.discrete)
            next_q = self._target_critic(self._target_encoder.encode_state_action(next_zs, next_action))
            with torch.autocast(device_type=next_q.device.type, enabled=False):
                # TD target in fp32 under any mixed precision (reward scales, bootstrap).
                ret, bootstrap = MF.multi_step_return(
                    rewards.float(), 1.0 - terminated, self.gamma, official_quirks=self.official_quirks
                )
                next_q_min = next_q.float().min(-1, keepdim=True).values
                target = (
                    ret + bootstrap * self.gamma**horizon * self.target_reward_scale * next_q_min
                ) / self.reward_scale
            zs = self.encoder.encode_state(obs)
            zsa = self.encoder.encode_state_action(zs, action)
        q = self.critic(zsa)
        with torch.autocast(device_type=q.device.type, enabled=False):
            q32 = q.float()
            loss = F.smooth_l1_loss(q32, target.expand_as(q32))
            priority = MF.lap_priority(q32.detach(), target, self.lap_alpha, self.min_priority)
        tensordict.set(self.tensor_keys.priority, priority)
        tensordict.set(self.tensor_keys.state_embedding, zs)
        metrics = TensorDict(
            {
                "loss_value": loss.detach(),
                "q_mean": q32.detach().mean(),
                "q_max": q32.detach().max(),
                "target_mean": target.mean(),
                "priority_mean": priority.mean(),
            },
            batch_size=[],
        )
        return loss, metrics

    # ------------------------------------------------------------------ policy (algorithm §7)
    def actor_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, TensorDict]:
        """Deterministic policy gradient through g and both (just-updated) critics, plus the pre-activation penalty.

        Uses ``state_embedding`` written by :meth:`value_loss` when present (algorithm §7), else encodes ``observation``
        without gradient. No gradient is deposited in encoder or critic parameters.
        """
        zs = tensordict.get(self.tensor_keys.state_embedding, None)
        if zs is None:
            with torch.no_grad():
                zs = self.encoder.encode_state(tensordict.get(self.tensor_keys.observation))
        action, pre_activation = self.policy(zs.detach())
        with _no_param_grad(self.encoder, self.critic):
            q = self.critic(self.encoder.encode_state_action(zs.detach(), action))
        q_term = -q.float().mean()  # mean over batch and both critics (paper Eq. 20)
        penalty = pre_activation.float().pow(2).mean()
        loss = q_term + self.pre_activation_weight * penalty
        metrics = TensorDict(
            {"loss_policy": loss.detach(), "policy_q": -q_term.detach(), "pre_activation_sq": penalty.detach()},
            batch_size=[],
        )
        return loss, metrics

    # ------------------------------------------------------------------ TorchRL entry point
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """All three losses on one encoder-mode batch (value/policy use its first 3 steps).

        Training loops that follow MR.Q's schedule call the three methods separately, each on its own batch.
        """
        enc_loss, enc_metrics = self.encoder_loss(tensordict)
        value_loss, value_metrics = self.value_loss(tensordict, horizon=min(3, tensordict.get(self.tensor_keys.reward).shape[1]))
        actor_loss, actor_metrics = self.actor_loss(tensordict)
        out = TensorDict({"loss_encoder": enc_loss, "loss_value": value_loss, "loss_policy": actor_loss}, batch_size=[])
        for metrics in (enc_metrics, value_metrics, actor_metrics):
            for key, value in metrics.items():
                if key not in out.keys():
                    out.set(key, value)
        return out

    @property
    def in_keys(self):
        k = self.tensor_keys
        return [k.observation, k.action, k.reward, k.terminated, k.next_observation]

    @property
    def out_keys(self):
        return ["loss_encoder", "loss_value", "loss_policy"]

"""``StepCollector``: MR.Q's env-step collector, a lean TorchRL-compatible stand-in for ``Collector`` (algorithm §9).

MR.Q stores one transition per env step and updates after each (algorithm §9 steps 2-5), so training collects with
``frames_per_batch=1``. TorchRL's ``Collector`` does this through its general machinery (carrier tensordicts,
``step_and_maybe_reset``, spec encodings, device casts, trajectory bookkeeping), about 2 ms per step on a 2-core CPU,
several times HalfCheetah's own simulator step (docs/benchmarks.md, "Collection"). For the presets (``make_env``: a
``GymWrapper`` around one of our gymnasium-level suite envs) this class takes the same step directly:

* it resets the env and calls the policy once at construction, the random phase draws ``env.rand_action(td)``
  and acting calls ``policy(td)`` on a batch-``[]`` tensordict holding ``"observation"``, exactly as
  ``Collector`` does, so it consumes the torch RNG identically;
* the env is stepped with ``GymWrapper``'s conversions (one-hot action -> index, a Box action -> float32 array;
  rewards float32, flags bool) and reset unseeded when an episode ends;
* each iteration yields a batch-``[1]`` tensordict with TorchRL's key layout (``"observation"``, ``"action"``,
  ``("next", "observation" | "reward" | "terminated" | "truncated" | "done")``) on ``storing_device``.

The transitions, and the torch RNG afterwards, equal ``Collector``'s bit for bit (tests/test_collector.py).
``init_random_frames`` switches the random phase on and off as on ``Collector``. :attr:`carrier` is the current
observation (what a mid-episode checkpoint saves). Other envs (your own TorchRL ``EnvBase``, transformed envs) keep
TorchRL's ``Collector``: :func:`supports` says which.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import torch
from gymnasium import spaces
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torchrl.collectors import BaseCollector, Collector
from torchrl.envs import EnvBase

from mrq_lightning import third_party
from mrq_lightning.evaluation import gym_action, steps_directly
from mrq_lightning.evaluation import policy_device as infer_policy_device

__all__ = ["StepCollector", "carried_observation", "make_collector", "restore_carried_observation", "supports"]

COLLECTOR_KINDS = ("lean", "torchrl")


def supports(env: EnvBase) -> bool:
    """Whether ``env`` is a preset that :class:`StepCollector` can step directly (``make_env``'s plain
    ``GymWrapper`` around one of our suite envs; see :func:`~mrq_lightning.evaluation.steps_directly`)."""
    return steps_directly(env)


class StepCollector(BaseCollector):
    """One preset env, one transition per iteration, endless (the trainer decides when to stop).

    Args:
        env: a preset from ``make_env`` (see :func:`supports`).
        policy: a TensorDict module reading ``"observation"`` and writing ``"action"``.
        policy_device: where the policy runs (observations are moved there); default: its parameters' device.
        storing_device: where the yielded transitions live (the replay buffer's device).
        init_random_frames: uniform random actions (``env.rand_action``) while fewer frames than this were taken.
    """

    def __init__(
        self,
        env: EnvBase,
        policy,
        *,
        policy_device: torch.device | str | None = None,
        storing_device: torch.device | str = "cpu",
        init_random_frames: float = 0,
    ) -> None:
        if not supports(env):
            raise ValueError(f"StepCollector steps the presets of make_env; use torchrl's Collector for {type(env).__name__}")
        super().__init__()
        self.env = env
        self.policy = policy
        self.policy_device = torch.device(policy_device) if policy_device is not None else infer_policy_device(policy)
        self.storing_device = torch.device(storing_device)
        self.init_random_frames = init_random_frames
        self.frames = 0
        # Cumulative seconds acting and in the env's step/reset (read by benchmarks/throughput.py; two clock reads each).
        self.timers = {"act": 0.0, "env": 0.0}
        self._base = third_party.torchrl_wrapped_env(env)
        self._discrete = isinstance(self._base.action_space, spaces.Discrete)
        self._observation: torch.Tensor | None = None
        # MR.Q's acting policy is a TensorDictModule "observation" -> "action": its module is called on the tensor
        # directly (the same computation, without building and reading a tensordict every step).
        plain = isinstance(policy, TensorDictModule) and type(policy) is TensorDictModule
        self._module = policy.module if plain and policy.in_keys == ["observation"] and policy.out_keys == ["action"] else None
        self._store_as_is = self.storing_device == torch.device("cpu")  # transitions are built on the CPU
        # Collector resets the env at construction and calls the policy once on that first observation (to learn
        # its output keys). Both are done here too, so the two collectors leave the torch RNG in the same state.
        self._act(self._current_observation())

    # ------------------------------------------------------------------ the current observation
    @property
    def carrier(self) -> TensorDict:
        """The observation the next step acts on (batch ``[]``), as ``Collector``'s carrier holds it."""
        return TensorDict({"observation": self._current_observation()}, batch_size=[])

    def _current_observation(self) -> torch.Tensor:
        if self._observation is None:  # the first step, or after shutdown: a fresh episode (unseeded reset)
            self._observation = self._as_tensor(self._base.reset()[0])
        return self._observation

    @carrier.setter
    def carrier(self, tensordict: TensorDictBase) -> None:
        self._observation = tensordict.get("observation").to("cpu").clone()

    @torch.no_grad()
    def _act(self, observation: torch.Tensor) -> torch.Tensor:
        observation = observation.to(self.policy_device)
        if self._module is not None:
            return self._module(observation)
        return self.policy(TensorDict({"observation": observation}, batch_size=[], device=self.policy_device))["action"]

    @staticmethod
    def _as_tensor(observation: np.ndarray) -> torch.Tensor:
        # The suites hand over a fresh array every step (float32 vector or uint8 frames): no copy needed.
        return torch.from_numpy(observation)

    # ------------------------------------------------------------------ stepping
    def __iter__(self) -> Iterator[TensorDictBase]:
        return self.iterator()

    def iterator(self) -> Iterator[TensorDictBase]:
        while True:
            yield self.next()

    def next(self) -> TensorDictBase:
        """Take one env step and return its transition (batch ``[1]``)."""
        observation = self._current_observation()
        t0 = time.perf_counter()
        if self.frames < self.init_random_frames:
            # float32 as the policy's actions (Collector stores a random one-hot int64 action in that dtype too)
            action = self.env.rand_action(TensorDict({"observation": observation}, batch_size=[]))["action"]
            action = action.to(torch.float32)
        else:
            action = self._act(observation).to("cpu")
        t1 = time.perf_counter()
        next_observation, reward, terminated, truncated, _ = self._base.step(gym_action(action, self._discrete))
        done = bool(terminated or truncated)
        if done:
            following_observation = self._as_tensor(self._base.reset()[0])
        t2 = time.perf_counter()
        self.timers["act"] += t1 - t0
        self.timers["env"] += t2 - t1
        next_observation = self._as_tensor(next_observation)
        # Every entry is built with batch [1] on the CPU: no need for the constructor's checks (third_party).
        following = third_party.unchecked_tensordict(
            {
                "observation": next_observation.unsqueeze(0),
                "reward": torch.tensor([[reward]], dtype=torch.float32),
                "terminated": torch.tensor([[bool(terminated)]]),
                "truncated": torch.tensor([[bool(truncated)]]),
                "done": torch.tensor([[done]]),
            },
            [1],
        )
        transition = third_party.unchecked_tensordict(
            {"observation": observation.unsqueeze(0), "action": action.unsqueeze(0), "next": following}, [1]
        )
        self.frames += 1
        self._observation = following_observation if done else next_observation
        return transition if self._store_as_is else transition.to(self.storing_device)

    # ------------------------------------------------------------------ torchrl BaseCollector API
    def set_seed(self, seed: int, static_seed: bool = False) -> int:
        """Seed the env as ``Collector.set_seed`` does (``env.set_seed``, i.e. a seeded reset); the next step acts
        in the episode that reset started."""
        out = self.env.set_seed(seed, static_seed=static_seed)
        self._observation = self._as_tensor(self._base.reset(seed=seed)[0])
        return out

    def state_dict(self) -> OrderedDict:
        return OrderedDict(frames=self.frames)

    def load_state_dict(self, state_dict: OrderedDict) -> None:
        self.frames = int(state_dict["frames"])

    def shutdown(self, timeout: float | None = None, close_env: bool = True, raise_on_error: bool = True) -> None:
        """Forget the current observation and, as ``Collector.shutdown`` does by default, close the env."""
        self._observation = None
        if close_env and not self.env.is_closed:
            self.env.close()

    def __repr__(self) -> str:
        return f"StepCollector(env={type(self._base).__name__}, frames={self.frames})"


def make_collector(
    env: EnvBase,
    policy,
    *,
    policy_device: torch.device | str = "cpu",
    storing_device: torch.device | str = "cpu",
    kind: str = "lean",
) -> BaseCollector:
    """The trainer's collector: a :class:`StepCollector` for a preset (``kind="lean"``), else TorchRL's
    ``Collector`` with one frame per batch (``kind="torchrl"``, or an env StepCollector cannot step). Both yield the
    same transitions and draw the same random numbers."""
    if kind == "lean" and supports(env):
        return StepCollector(env, policy, policy_device=policy_device, storing_device=storing_device)
    return Collector(
        env,
        policy,
        frames_per_batch=1,
        total_frames=-1,
        policy_device=policy_device,
        env_device="cpu",
        storing_device=storing_device,
        track_traj_ids=False,
        auto_register_policy_transforms=False,
    )


def carried_observation(collector: BaseCollector) -> dict | None:
    """The observation the collector acts on next, as a dict of CPU tensors for a checkpoint (``None`` after a
    ``Collector``'s shutdown)."""
    carrier = collector.carrier if isinstance(collector, StepCollector) else third_party.collector_carrier(collector)
    return None if carrier is None else carrier.select("observation").cpu().to_dict()


def restore_carried_observation(collector: BaseCollector, saved: dict) -> None:
    """Make the collector act on ``saved["observation"]`` next (from :func:`carried_observation` of either kind of
    collector, or a whole ``Collector`` carrier of an earlier checkpoint)."""
    observation = torch.as_tensor(saved["observation"])
    if isinstance(collector, StepCollector):
        collector.carrier = TensorDict({"observation": observation}, batch_size=[])
        return
    carrier = third_party.collector_carrier(collector).clone()
    carrier.set("observation", observation.to(carrier.get("observation").device))
    third_party.set_collector_carrier(collector, carrier)

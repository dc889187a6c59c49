"""Real pixel environments into the real replay buffer (algorithm §11, §18 item 4).

Every state rebuilt from the buffer's single stored frames must equal the environment's own stacked observation,
at every step of an episode and across episode starts (where the first frame is repeated); the successor of each
transition must equal the environment's next observation; discrete actions are stored one-hot, random phase
included (quirk Q2 fixed).
"""

from __future__ import annotations

import pytest
import torch
from torchrl.collectors import Collector

from mrq_lightning.data import MRQReplayBuffer
from mrq_lightning.envs import make_env


def _collect_and_store(name: str, steps: int, **env_kwargs):
    env, info = make_env(name, seed=3, **env_kwargs)
    buffer = MRQReplayBuffer(capacity=4 * steps, obs_shape=info.obs_shape, action_dim=info.action_dim,
                             pixels=True, history=info.history, augment=False)  # fmt: skip
    collector = Collector(env, None, frames_per_batch=1, total_frames=steps, track_traj_ids=False,
                          auto_register_policy_transforms=False)  # fmt: skip
    transitions, slots = [], []
    for td in collector:
        slots.append(buffer.extend(td).reshape(-1)[0].item())
        transitions.append(td[0].clone())
    collector.shutdown()
    return info, buffer, transitions, torch.tensor(slots)


@pytest.mark.envs
@pytest.mark.parametrize(
    "name,steps,kwargs",
    [("Atari-Pong-v5", 260, {"max_frames": 400}), ("Dmc-visual-cartpole-balance", 24, {"max_steps": 7})],
    ids=["atari", "dmc-visual"],
)
def test_rebuilt_frame_stacks_equal_env_observations(name, steps, kwargs):
    info, buffer, transitions, slots = _collect_and_store(name, steps, **kwargs)
    batch = buffer.gather(slots, horizon=1, include_intermediate=True)
    observations = torch.stack([t["observation"] for t in transitions])
    next_observations = torch.stack([t["next", "observation"] for t in transitions])
    assert batch["observation"].dtype == torch.uint8
    assert torch.equal(batch["observation"], observations)
    # The newest transition's successor frame is written with the next transition (or the episode end), so it is
    # not yet available (and its slot is never a valid start); every earlier successor must match exactly.
    assert torch.equal(batch["next", "observation"][:-1, 0], next_observations[:-1])
    starts = [0] + [i + 1 for i, t in enumerate(transitions[:-1]) if t["next", "done"].item()]
    assert len(starts) >= 2, "the shortened time limit should end at least one episode inside the stream"
    for i in starts:  # an episode's first state repeats its first frame `history` times
        frames = observations[i].reshape(info.history, -1)
        assert all(torch.equal(frames[0], frame) for frame in frames)


@pytest.mark.envs
def test_discrete_actions_are_stored_one_hot_from_the_random_phase():
    info, buffer, transitions, slots = _collect_and_store("Atari-Pong-v5", 40, max_frames=400)
    actions = buffer.gather(slots, horizon=1)["action"][:, 0]
    assert actions.dtype == torch.float32 and actions.shape == (40, info.action_dim)
    assert torch.equal(actions.sum(-1), torch.ones(40)) and set(actions.unique().tolist()) == {0.0, 1.0}
    taken = torch.stack([t["action"] for t in transitions]).float()
    assert torch.equal(actions, taken)

"""Tests for MRQReplayBuffer (algorithm §8, §11, §12, §16 Q4-Q6, §18 items 3, 4, 6)."""

from __future__ import annotations

import shutil

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import TensorDictReplayBuffer

from mrq_lightning.data import MRQReplayBuffer, ReplayBufferCheckpointError
from mrq_lightning.data import persistence as persistence_module
from mrq_lightning.functional import multi_step_return, random_shift

# ------------------------------------------------------------------------------------------------------------------
# Hand-made episode streams
# ------------------------------------------------------------------------------------------------------------------


def vector_episode(
    episode: int,
    length: int,
    end: str | None,
    obs_dim: int = 3,
    action_dim: int = 2,
    start: int = 0,
    steps: int | None = None,
) -> TensorDict:
    """Steps ``start .. start+steps-1`` of an episode whose state at t is ``100 * episode + t`` (every entry).

    Rewards are ``episode + t / 10``, actions ``[t, -t, ...]``. The last step of the episode (t = length - 1)
    carries ``end`` ("terminated", "truncated" or None for an episode still running).
    """
    steps = length - start if steps is None else steps
    t = torch.arange(start, start + steps)
    code = (100 * episode + t).float()
    last = t == length - 1
    terminated = last & (end == "terminated")
    truncated = last & (end == "truncated")
    return TensorDict(
        {
            "observation": code[:, None].expand(steps, obs_dim).clone(),
            "action": torch.stack([t.float(), -t.float()], -1)[:, :action_dim].clone(),
            "next": {
                "observation": (code + 1)[:, None].expand(steps, obs_dim).clone(),
                "reward": (episode + t / 10).float()[:, None],
                "terminated": terminated[:, None],
                "truncated": truncated[:, None],
                "done": (terminated | truncated)[:, None],
            },
        },
        [steps],
    )


def frame(code: int, channels: int, size: int = 4) -> torch.Tensor:
    """A distinct uint8 frame: a ramp offset by ``code`` (so shifts are visible), ``[channels, size, size]``."""
    ramp = torch.arange(channels * size * size).reshape(channels, size, size)
    return ((ramp + 7 * code) % 251).to(torch.uint8)


def stacked(codes: list[int], t: int, history: int, channels: int) -> torch.Tensor:
    """The env's frame stack at step t: frames ``codes[max(0, t-history+1) .. t]``, first frame repeated."""
    picks = [codes[max(0, k)] for k in range(t - history + 1, t + 1)]
    return torch.cat([frame(c, channels) for c in picks], 0)


def pixel_episode(codes: list[int], end: str | None, history: int, channels: int, action_dim: int = 2) -> TensorDict:
    """An episode whose raw frames are ``frame(codes[t])``; ``len(codes) - 1`` transitions."""
    steps = len(codes) - 1
    obs = torch.stack([stacked(codes, t, history, channels) for t in range(steps)])
    next_obs = torch.stack([stacked(codes, t + 1, history, channels) for t in range(steps)])
    last = torch.arange(steps) == steps - 1
    terminated = last & (end == "terminated")
    truncated = last & (end == "truncated")
    return TensorDict(
        {
            "observation": obs,
            "action": torch.randn(steps, action_dim),
            "next": {
                "observation": next_obs,
                "reward": torch.randn(steps, 1),
                "terminated": terminated[:, None],
                "truncated": truncated[:, None],
                "done": (terminated | truncated)[:, None],
            },
        },
        [steps],
    )


def vector_buffer(**kwargs) -> MRQReplayBuffer:
    kwargs.setdefault("capacity", 64)
    kwargs.setdefault("batch_size", 32)
    return MRQReplayBuffer(obs_shape=(3,), action_dim=2, **kwargs)


def toy_stream(rb: MRQReplayBuffer) -> None:
    """Algorithm §18 item 3: episode A (8 steps, terminated) -> slots 0-7, final obs 8; B (12, truncated) -> 9-20, 21."""
    rb.extend(vector_episode(0, 8, "terminated"))
    rb.extend(vector_episode(1, 12, "truncated"))


def value(x: torch.Tensor) -> torch.Tensor:
    """The episode code of vector states built by :func:`vector_episode` (all entries are equal)."""
    return x[..., 0]


# ------------------------------------------------------------------------------------------------------------------
# Layout, validity, windows
# ------------------------------------------------------------------------------------------------------------------


def test_is_a_torchrl_buffer_and_counts_slots():
    rb = vector_buffer()
    assert isinstance(rb, TensorDictReplayBuffer)
    assert len(rb) == 0 and rb.num_transitions == 0
    toy_stream(rb)
    assert len(rb) == 22  # 8 + 1 + 12 + 1: one final-observation slot per episode
    assert rb.num_transitions == 20
    assert rb.write_count == 20


def test_toy_stream_valid_starts_and_sampling():
    rb = vector_buffer()
    toy_stream(rb)
    expected = torch.zeros(22, dtype=torch.bool)
    expected[0:8] = True  # every transition of the terminated episode A
    expected[9:16] = True  # B's 12 transitions except its last 5
    assert torch.equal(rb.valid_mask, expected)
    torch.manual_seed(0)
    drawn = torch.cat([rb.sample(256, horizon=5, include_intermediate=True)["index"] for _ in range(8)])
    assert expected[drawn].all()
    assert set(drawn.tolist()) == set(expected.nonzero().flatten().tolist())


@pytest.mark.parametrize("official", [False, True])
def test_encoder_window_across_terminal(official):
    rb = vector_buffer(official_quirks=official)
    toy_stream(rb)
    batch = rb.gather(torch.tensor([4, 5, 7, 3]), horizon=5, include_intermediate=True)
    nxt = value(batch["next", "observation"])
    # Start 4: positions 0..2 stay inside A; position 3 is A's terminal transition (slot 7).
    assert nxt[0, :3].tolist() == [5.0, 6.0, 7.0]
    if official:
        # Q4: the state of the final-obs slot 8, rebuilt from its never-written (zero) history indices = slot 0.
        assert nxt[0, 3].item() == 0.0
        assert nxt[1, 3].item() == 100.0  # start 5: the state of slot 9, B's first state
    else:
        assert nxt[0, 3].item() == 8.0  # A's true final observation
        assert nxt[1, 2].item() == 8.0
    # Start 7 (the terminal itself): position 0 is the final-obs slot's stale state in official mode.
    assert nxt[2, 0].item() == (0.0 if official else 8.0)
    # Start 3: the terminal is the last window element, whose target is the stored successor in both modes.
    assert nxt[3].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]
    # The last position always comes from the stored successor of slot j+H-1.
    assert nxt[1, 4].item() == 101.0  # start 5: slot 9's successor = B's s_1
    assert value(batch["observation"]).tolist() == [4.0, 5.0, 7.0, 3.0]
    # Rewards / terminated / actions windows across the terminal (final-obs slot 8 has reward 0, never written).
    assert torch.allclose(batch["next", "reward"][0], torch.tensor([0.4, 0.5, 0.6, 0.7, 0.0]))
    assert torch.allclose(batch["next", "reward"][1], torch.tensor([0.5, 0.6, 0.7, 0.0, 1.0]))
    assert batch["next", "terminated"][0, :4].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert batch["action"][0, :4, 0].tolist() == [4.0, 5.0, 6.0, 7.0]
    assert batch["next", "terminated"].dtype == torch.float32


def test_value_window_return_and_bootstrap_near_terminal():
    rb = vector_buffer()
    toy_stream(rb)
    batch = rb.gather(torch.tensor([3, 5, 6, 7]), horizon=3)
    assert batch["next", "observation"].shape == (4, 3)
    assert value(batch["next", "observation"])[:2].tolist() == [6.0, 8.0]  # s_{j+3}; start 5 ends at the terminal
    gamma = 0.99
    ret, boot = multi_step_return(batch["next", "reward"], 1.0 - batch["next", "terminated"], gamma)
    r = lambda t: t / 10  # noqa: E731 - episode 0 rewards
    expected = [r(3) + gamma * r(4) + gamma**2 * r(5), r(5) + gamma * r(6) + gamma**2 * r(7), r(6) + gamma * r(7), r(7)]
    assert torch.allclose(ret.flatten(), torch.tensor(expected))
    assert boot.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]  # every window crossing the terminal is cut


def test_batch_contract_shapes_vectors():
    rb = vector_buffer()
    toy_stream(rb)
    enc = rb.sample(16, horizon=5, include_intermediate=True)
    assert enc.batch_size == (16,)
    assert enc["observation"].shape == (16, 3) and enc["observation"].dtype == torch.float32
    assert enc["action"].shape == (16, 5, 2) and enc["action"].dtype == torch.float32
    assert enc["next", "reward"].shape == (16, 5) and enc["next", "terminated"].shape == (16, 5)
    assert enc["next", "observation"].shape == (16, 5, 3)
    assert enc["index"].dtype == torch.int64
    val = rb.sample()  # defaults: batch_size from the constructor, horizon 3, no intermediates
    assert val.batch_size == (32,) and val["next", "observation"].shape == (32, 3)
    assert val["next", "reward"].shape == (32, 3)
    with pytest.raises(ValueError, match="horizon"):
        rb.sample(4, horizon=6)


def test_no_valid_start_raises():
    rb = vector_buffer()
    with pytest.raises(RuntimeError, match="empty"):
        rb.sample(4)
    rb.extend(vector_episode(0, 10, None, steps=5))  # 5 transitions of a running episode: none valid yet
    with pytest.raises(RuntimeError, match="no valid start"):
        rb.sample(4)
    rb.add(vector_episode(0, 10, None, start=5, steps=1)[0])  # the 6th makes slot 0 valid
    assert rb.sample(8)["index"].eq(0).all()


def test_short_terminated_and_truncated_episodes():
    rb = vector_buffer()
    rb.extend(vector_episode(0, 3, "terminated"))  # slots 0-2, final 3: all three valid
    rb.extend(vector_episode(1, 3, "truncated"))  # slots 4-6, final 7: none valid
    assert rb.valid_mask.tolist() == [True, True, True, False, False, False, False, False]
    assert rb.env_terminates


def test_batched_and_stepwise_extend_agree_and_accept_shapes():
    a, b = vector_buffer(capacity=12), vector_buffer(capacity=12)
    stream = [vector_episode(0, 7, "terminated"), vector_episode(1, 9, "truncated"), vector_episode(2, 20, None)]
    for td in stream:  # one call per episode, 20 > capacity / 2 exercises the chunked write
        a.extend(td)
    for td in stream:
        for t in range(td.shape[0]):
            if t % 2:
                b.add(td[t])  # batch []
            else:
                b.extend(td[t : t + 1].unsqueeze(0))  # batch [1, 1]
    sa, sb = a.state_dict(), b.state_dict()
    for name, tensor in sa["storage"]["tensors"].items():
        assert torch.equal(tensor, sb["storage"]["tensors"][name]), name
    assert sa["writer"] == sb["writer"]
    assert torch.equal(sa["sampler"]["priority"], sb["sampler"]["priority"])


@pytest.mark.parametrize("pixels", [False, True])
def test_numpy_and_torch_slot_writes_agree(pixels):
    """On the CPU the writer fills slots through numpy views; a GPU buffer uses torch indexing. Both write the same
    values: the same stream (terminated, truncated and running episodes, batched and one step at a time, wrapping
    the ring several times) through each leaves identical storage."""
    def make() -> MRQReplayBuffer:
        if pixels:
            return MRQReplayBuffer(capacity=16, obs_shape=(2, 4, 4), action_dim=2, pixels=True, history=2, horizon=3)
        return vector_buffer(capacity=16, horizon=3)

    numpy_written, torch_written = make(), make()
    torch_written._writer._write_numpy = torch_written._writer._write_torch  # the GPU path, on the CPU
    if pixels:
        stream = [pixel_episode([7 * e + k for k in range(n + 1)], end, 2, 1) for e, (n, end) in
                  enumerate([(5, "terminated"), (2, "truncated"), (9, None), (4, "terminated"), (6, "truncated")])]  # fmt: skip
    else:
        stream = [vector_episode(e, n, end) for e, (n, end) in
                  enumerate([(5, "terminated"), (2, "truncated"), (9, "truncated"), (4, "terminated"), (7, None)])]  # fmt: skip
    for k, td in enumerate(stream):
        for rb in (numpy_written, torch_written):
            if k % 2:
                rb.extend(td)
            else:
                for t in range(td.shape[0]):
                    rb.extend(td[t : t + 1])
        a, b = numpy_written.state_dict(), torch_written.state_dict()
        for name, tensor in a["storage"]["tensors"].items():
            assert torch.equal(tensor, b["storage"]["tensors"][name]), (k, name)
        assert a["writer"] == b["writer"]
        assert torch.equal(a["sampler"]["priority"], b["sampler"]["priority"])


# ------------------------------------------------------------------------------------------------------------------
# Frame history (pixels)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("history", "channels"), [(4, 1), (3, 3)])
def test_frame_history_rebuilds_stacks(history, channels):
    rb = MRQReplayBuffer(
        capacity=64, obs_shape=(channels * history, 4, 4), action_dim=2, pixels=True, history=history, augment=False
    )
    episodes = [([1, 2, 3, 4, 5], "terminated"), ([11, 12, 13, 14, 15, 16, 17], "truncated"), ([21, 22, 23], None)]
    tds = [pixel_episode(codes, end, history, channels) for codes, end in episodes]
    slots = [rb.extend(td) for td in tds]
    for (_, end), td, index in zip(episodes, tds, slots):
        batch = rb.gather(index, horizon=1, include_intermediate=True)
        assert batch["observation"].dtype == torch.uint8
        assert torch.equal(batch["observation"], td["observation"])  # incl. first frame repeated at t = 0
        # Successors, incl. the final observation of ended episodes. A running episode's newest successor frame
        # only arrives with its next transition.
        known = len(index) if end else len(index) - 1
        assert torch.equal(batch["next", "observation"][:known, 0], td["next", "observation"][:known])
        value_batch = rb.gather(index, horizon=1)
        assert torch.equal(value_batch["next", "observation"][:known], td["next", "observation"][:known])
    # Across the episode boundary: episode 2's first state holds only its own first frame.
    first = rb.gather(slots[1][:1], horizon=1)["observation"][0]
    assert torch.equal(first, torch.cat([frame(11, channels)] * history))
    assert rb.memory_bytes() == 64 * (channels * 16 + 2 * 4 + 4 * 3 + 2 + 2 * 4 * history)


def test_pixel_augmentation_shifts_each_state_independently():
    history, channels = 2, 1
    rb = MRQReplayBuffer(capacity=32, obs_shape=(2, 4, 4), action_dim=2, pixels=True, history=history)
    td = pixel_episode(list(range(10)), "terminated", history, channels)
    rb.extend(td)
    index = torch.arange(9).repeat(8)
    torch.manual_seed(3)
    batch = rb.gather(index, horizon=2, include_intermediate=True)
    rb.augment = False
    clean = rb.gather(index, horizon=2, include_intermediate=True)
    offsets = torch.cartesian_prod(torch.arange(9), torch.arange(9))  # every (dy, dx)

    def matching_shifts(shifted, original) -> set[int]:
        candidates = random_shift(original.expand(81, *original.shape), offsets=offsets)
        return set((candidates == shifted).flatten(1).all(1).nonzero().flatten().tolist())

    def is_shift(shifted, original):
        return bool(matching_shifts(shifted, original))

    assert all(is_shift(batch["observation"][b], clean["observation"][b]) for b in range(len(index)))
    for i in range(2):
        assert all(is_shift(batch["next", "observation"][b, i], clean["next", "observation"][b, i]) for b in range(20))
    # Independent draws: the 8 copies of start slot 0 (and its next states) are not all shifted alike.
    copies = batch["observation"][index == 0]
    assert len({bytes(c.flatten().tolist()) for c in copies}) > 1
    nexts = batch["next", "observation"][index == 0, 0]
    assert len({bytes(c.flatten().tolist()) for c in nexts}) > 1
    # A state and its own next state are shifted by separate draws: for some samples no single (dy, dx) explains both.
    assert any(
        not matching_shifts(batch["observation"][b], clean["observation"][b])
        & matching_shifts(batch["next", "observation"][b, 0], clean["next", "observation"][b, 0])
        for b in range(len(index))
    )


def test_vectors_are_never_augmented():
    rb = vector_buffer(augment=True)
    toy_stream(rb)
    batch = rb.gather(torch.tensor([0, 1]), horizon=3)
    assert value(batch["observation"]).tolist() == [0.0, 1.0]


def test_wrap_around_invalidation():
    history, channels = 2, 1
    rb = MRQReplayBuffer(
        capacity=10, obs_shape=(2, 4, 4), action_dim=2, pixels=True, history=history, augment=False
    )
    rb.extend(pixel_episode(list(range(7)), "terminated", history, channels))  # slots 0-5, final obs 6
    assert rb.valid_mask.tolist() == [True] * 6 + [False]
    b_codes = [50 + k for k in range(12)]
    b = pixel_episode(b_codes, None, history, channels)
    rb.extend(b[:3])  # slots 7, 8, 9 (now full); the write at 9 also invalidates (9 + 1) % 10 = 0
    assert len(rb) == 10
    assert rb.valid_mask.tolist() == [False] + [True] * 5 + [False] * 4
    rb.extend(b[3:4])  # slot 0: invalidates 0 (written) and 1 (its state reads the overwritten frame)
    assert rb.valid_mask.nonzero().flatten().tolist() == [2, 3, 4, 5]
    rb.extend(b[4:5])  # slot 1: invalidates 1, 2
    assert rb.valid_mask.nonzero().flatten().tolist() == [3, 4, 5]
    rb.extend(b[5:6])  # slot 2: invalidates 2, 3; B's 6th transition makes slot 7 valid
    assert rb.valid_mask.nonzero().flatten().tolist() == [4, 5, 7]
    # States of B across the ring seam are rebuilt correctly.
    batch = rb.gather(torch.tensor([9, 0, 1]), horizon=1)
    for row, t in enumerate([2, 3, 4]):
        assert torch.equal(batch["observation"][row], stacked(b_codes, t, history, channels))
    # A window of start 7 runs 7, 8, 9, 0, 1 and reads B's actions in order.
    window = rb.gather(torch.tensor([7]), horizon=5)
    assert torch.equal(window["action"][0], b["action"][:5])
    torch.manual_seed(0)
    drawn = rb.sample(512)["index"]
    assert set(drawn.tolist()) <= {4, 5, 7}


def test_small_capacity_rejected():
    with pytest.raises(ValueError, match="capacity"):
        MRQReplayBuffer(capacity=7, obs_shape=(3,), action_dim=1, horizon=5, history=2)


# ------------------------------------------------------------------------------------------------------------------
# Priorities
# ------------------------------------------------------------------------------------------------------------------


def test_priorities_initial_max_and_last_write_wins():
    rb = vector_buffer()
    rb.extend(vector_episode(0, 8, "terminated"))  # slots 0-7, final 8
    assert rb.priorities[:8].tolist() == [1.0] * 8  # initial running max = min_priority
    assert rb.priorities[8].item() == 0.0  # final-obs slot: never written, initialised to 0 (Q6)
    rb.update_priority(torch.tensor([2, 2, 2, 5]), torch.tensor([2.0, 5.0, 1.5, 0.3]))
    assert rb.priorities[2].item() == 1.5  # last write wins
    assert rb.priorities[5].item() == 1.0  # clamped at min_priority ** alpha
    assert (rb.priorities[:8] >= 1.0).all()
    assert rb.max_priority == 5.0
    index = rb.extend(vector_episode(1, 4, None))
    assert rb.priorities[index].tolist() == [5.0] * 4  # new items get the running max
    rb.update_priority(index, torch.full((4,), 1.2))
    assert rb.max_priority == 5.0  # never decays
    rb.update_tensordict_priority(TensorDict({"index": index[:1], "priority": torch.tensor([[3.0]])}, [1]))
    assert rb.priorities[index[0]].item() == 3.0


def test_sampling_frequency_proportional_to_priority():
    rb = vector_buffer()
    rb.extend(vector_episode(0, 20, "terminated"))  # 20 valid starts
    rb.update_priority(torch.tensor([0, 1]), torch.tensor([4.0, 2.0]))
    torch.manual_seed(1)
    n = 20_000
    counts = torch.bincount(rb.sample(n, horizon=1)["index"], minlength=21).float() / n
    total = 4.0 + 2.0 + 18.0
    assert abs(counts[0] - 4 / total) < 0.02
    assert abs(counts[1] - 2 / total) < 0.02
    assert abs(counts[2:20].mean() - 1 / total) < 0.005
    assert counts[20] == 0  # final-observation slot


def test_sampling_is_reproducible_with_torch_seed():
    rb = vector_buffer()
    toy_stream(rb)
    torch.manual_seed(7)
    first = rb.sample(64, horizon=5, include_intermediate=True)
    torch.manual_seed(7)
    second = rb.sample(64, horizon=5, include_intermediate=True)
    assert (first == second).all()


# ------------------------------------------------------------------------------------------------------------------
# Statistics and actions
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("official", [False, True])
def test_reward_scale(official):
    rb = vector_buffer(official_quirks=official)
    assert rb.reward_scale().item() == 1.0  # empty buffer: the initial r̄
    td = vector_episode(0, 3, "terminated")
    td["next", "reward"] = torch.tensor([[2.0], [-4.0], [6.0]])
    rb.extend(td)  # slots 0-2, final-obs slot 3 (reward 0)
    expected = 12.0 / 4 if official else 12.0 / 3
    assert rb.reward_scale().item() == pytest.approx(expected)
    zero = vector_buffer(official_quirks=official)
    td["next", "reward"] = torch.zeros(3, 1)
    zero.extend(td)
    assert zero.reward_scale().item() == pytest.approx(1e-8)


def test_env_terminates_flag():
    rb = vector_buffer()
    rb.extend(vector_episode(0, 6, "truncated"))
    assert not rb.env_terminates
    rb.extend(vector_episode(1, 2, "terminated"))
    assert rb.env_terminates
    rb.extend(vector_episode(2, 6, "truncated"))
    assert rb.env_terminates


@pytest.mark.parametrize("form", ["float", "bool", "index", "index1"])
def test_discrete_actions_round_trip_as_float_one_hot(form):
    rb = MRQReplayBuffer(capacity=32, obs_shape=(3,), action_dim=5)
    td = vector_episode(0, 6, "terminated")
    actions = torch.tensor([0, 4, 2, 2, 1, 3])
    one_hot = torch.nn.functional.one_hot(actions, 5)
    td["action"] = {"float": one_hot.float(), "bool": one_hot.bool(), "index": actions, "index1": actions[:, None]}[
        form
    ]
    rb.extend(td)
    batch = rb.gather(torch.tensor([0]), horizon=5)
    assert batch["action"].dtype == torch.float32
    assert torch.equal(batch["action"][0], one_hot[:5].float())


@pytest.mark.parametrize(
    "obs_shape, history, action_dim, expected",
    [((4, 84, 84), 4, 6, 7_126),  # Atari-Pong-v5: the README / docs/benchmarks.md figure
     ((4, 84, 84), 4, 18, 7_174),  # an Atari game with the full 18-action set
     ((9, 84, 84), 3, 1, 21_210),  # Dmc-visual-cartpole-balance: the README figure
     ((9, 84, 84), 3, 6, 21_230)],  # Dmc-visual-cheetah-run
)  # fmt: skip
def test_memory_per_slot(obs_shape, history, action_dim, expected):
    buffer = MRQReplayBuffer(capacity=1000, obs_shape=obs_shape, action_dim=action_dim, pixels=True, history=history)
    frame = obs_shape[0] // history * 84 * 84  # one uint8 frame per slot, never the whole stack
    # + float32 action, reward, not-done, priority; 2 bool masks; 2 int32 index rows of `history` slots
    assert buffer.memory_bytes() / 1000 == frame + 4 * action_dim + 3 * 4 + 2 + 2 * 4 * history == expected


# ------------------------------------------------------------------------------------------------------------------
# Checkpointing
# ------------------------------------------------------------------------------------------------------------------


def pixel_buffer(**kwargs) -> MRQReplayBuffer:
    return MRQReplayBuffer(capacity=24, obs_shape=(2, 4, 4), action_dim=2, pixels=True, history=2, **kwargs)


def filled_pixel_buffer() -> MRQReplayBuffer:
    rb = pixel_buffer()
    rb.extend(pixel_episode(list(range(8)), "terminated", 2, 1))
    rb.extend(pixel_episode(list(range(20, 30)), None, 2, 1)[:6])  # episode still running
    rb.update_priority(torch.tensor([1, 3, 9]), torch.tensor([2.0, 3.0, 1.5]))
    return rb


def test_dumps_loads_round_trip(tmp_path):
    rb = filled_pixel_buffer()
    path = tmp_path / "replay"
    rb.dumps(path)
    fresh = pixel_buffer()
    fresh.loads(path)
    assert len(fresh) == len(rb) and fresh.env_terminates == rb.env_terminates
    assert fresh.max_priority == rb.max_priority
    for _ in range(2):
        torch.manual_seed(11)
        a = rb.sample(32, horizon=5, include_intermediate=True)
        torch.manual_seed(11)
        b = fresh.sample(32, horizon=5, include_intermediate=True)
        assert (a == b).all()
        # The cursor and the running episode continue identically.
        more = pixel_episode(list(range(20, 30)), None, 2, 1)[6:8]
        assert torch.equal(rb.extend(more), fresh.extend(more.clone()))
    # A terminal window that runs past the write frontier reads no uninitialised frame: deterministic after loads.
    edge = pixel_buffer(augment=False)
    edge.extend(pixel_episode(list(range(8)), "terminated", 2, 1))  # slots 0-6, final obs 7
    b_episode = pixel_episode(list(range(60, 70)), None, 2, 1)
    edge.extend(b_episode[:1])  # slot 8, whose successor indices are [8, 9]; slot 9 is not written yet
    edge.dumps(tmp_path / "edge")
    edge_copy = pixel_buffer(augment=False)
    edge_copy.loads(tmp_path / "edge")
    window = edge.gather(torch.tensor([6]), horizon=5, include_intermediate=True)
    assert (window == edge_copy.gather(torch.tensor([6]), horizon=5, include_intermediate=True)).all()
    first_frame = edge.gather(torch.tensor([0]), horizon=1)["observation"][0, -1]
    assert torch.equal(window["next", "observation"][0, 2, 0], frame(60, 1)[0])  # slot 8's own frame
    assert torch.equal(window["next", "observation"][0, 2, 1], first_frame)  # unwritten slot 9 -> slot 0
    shutil.rmtree(tmp_path / "edge")
    # Overwriting an existing checkpoint replaces it.
    rb.dumps(path)
    again = pixel_buffer()
    again.loads(path)
    assert len(again) == len(rb)
    assert [p.name for p in tmp_path.iterdir()] == ["replay"]  # no temp or backup directories left


def test_dumps_is_atomic(tmp_path, monkeypatch):
    rb = filled_pixel_buffer()
    path = tmp_path / "replay"

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(persistence_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        rb.dumps(path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # the temp directory was cleaned up
    monkeypatch.undo()

    rb.dumps(path)
    size = len(rb)
    rb.extend(pixel_episode(list(range(40, 45)), "terminated", 2, 1))
    monkeypatch.setattr(persistence_module.torch, "save", broken_save)
    with pytest.raises(OSError):
        rb.dumps(path)
    monkeypatch.undo()
    old = pixel_buffer()
    old.loads(path)  # the previous checkpoint is intact
    assert len(old) == size
    assert [p.name for p in tmp_path.iterdir()] == ["replay"]


def test_loads_errors_name_path_and_problem(tmp_path):
    rb = filled_pixel_buffer()
    with pytest.raises(FileNotFoundError, match="missing"):
        pixel_buffer().loads(tmp_path / "missing")

    path = tmp_path / "replay"
    rb.dumps(path)
    with pytest.raises(ReplayBufferCheckpointError, match="capacity: saved 24 != buffer 30"):
        MRQReplayBuffer(capacity=30, obs_shape=(2, 4, 4), action_dim=2, pixels=True, history=2).loads(path)
    with pytest.raises(ReplayBufferCheckpointError, match="obs_shape"):
        MRQReplayBuffer(capacity=24, obs_shape=(2, 5, 5), action_dim=2, pixels=True, history=2).loads(path)

    (path / "state.pt").write_bytes(b"not a torch file")
    target = pixel_buffer()
    with pytest.raises(ReplayBufferCheckpointError, match="state.pt") as info:
        target.loads(path)
    assert str(path) in str(info.value)
    assert len(target) == 0  # untouched

    (path / "meta.json").write_text("{ truncated")
    with pytest.raises(ReplayBufferCheckpointError, match="meta.json") as info:
        target.loads(path)
    assert str(path) in str(info.value)

    (path / "meta.json").write_text('"mrq_lightning.replay/1"')  # the format string alone, not the metadata
    with pytest.raises(ReplayBufferCheckpointError, match="unknown format"):
        target.loads(path)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReplayBufferCheckpointError, match="incomplete"):
        target.loads(empty)


def test_load_state_dict_rejects_inconsistent_content():
    rb = filled_pixel_buffer()
    state = rb.state_dict()
    state["sampler"]["priority"] = state["sampler"]["priority"][:-1]
    target = pixel_buffer()
    with pytest.raises(ValueError, match="priorities"):
        target.load_state_dict(state)
    assert len(target) == 0


def test_empty_resets_everything():
    rb = vector_buffer()
    toy_stream(rb)
    rb.update_priority(torch.tensor([0]), torch.tensor([9.0]))
    rb.empty()
    assert len(rb) == 0 and not rb.env_terminates and rb.max_priority == 1.0
    rb.extend(vector_episode(0, 7, None))
    assert rb.valid_mask.tolist() == [True, True] + [False] * 5
    assert value(rb.gather(torch.tensor([0]), horizon=1)["observation"]).item() == 0.0


def test_dumps_refuses_to_replace_foreign_directory(tmp_path):
    foreign = tmp_path / "run"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ReplayBufferCheckpointError, match="refusing"):
        vector_buffer().dumps(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_device_placement_matches_constructor(device, tmp_path):
    rb = MRQReplayBuffer(
        capacity=32, obs_shape=(2, 4, 4), action_dim=2, pixels=True, history=2, device=device
    )
    rb.extend(pixel_episode(list(range(10)), "terminated", 2, 1))  # CPU input, stored on `device`
    assert rb.memory_bytes() > 0 and rb._storage.frames.device.type == device
    for batch in (rb.sample(4), rb.sample(4, horizon=5, include_intermediate=True)):
        assert batch.device.type == device
        assert all(t.device.type == device for t in batch.values(True, True))
    rb.update_priority(batch["index"], torch.full((4,), 2.0, device=device))
    assert rb.reward_scale().device.type == device
    rb.dumps(tmp_path / "rb")
    copy = MRQReplayBuffer(
        capacity=32, obs_shape=(2, 4, 4), action_dim=2, pixels=True, history=2, device=device
    )
    copy.loads(tmp_path / "rb")
    torch.manual_seed(0)
    a = rb.sample(8, horizon=5, include_intermediate=True)
    torch.manual_seed(0)
    b = copy.sample(8, horizon=5, include_intermediate=True)
    assert (a == b).all()


def test_input_validation_and_done_only_flags():
    rb = vector_buffer()
    td = vector_episode(0, 6, "truncated")
    del td["next", "truncated"]  # truncation derived from done & ~terminated
    rb.extend(td)
    assert not rb.env_terminates and len(rb) == 7
    assert rb.valid_mask.tolist() == [True] + [False] * 6  # the truncated tail (last 5) stays invalid
    with pytest.raises(ValueError, match="ONE environment"):
        rb.extend(torch.stack([vector_episode(0, 4, None), vector_episode(1, 4, None)]))
    with pytest.raises(ValueError, match="per-step shape"):
        MRQReplayBuffer(capacity=32, obs_shape=(4,), action_dim=2).extend(vector_episode(0, 4, None))
    pixels = pixel_buffer()
    bad = pixel_episode([1, 2, 3], None, 2, 1)
    bad["observation"] = bad["observation"].float()
    with pytest.raises(TypeError, match="uint8"):
        pixels.extend(bad)


def _flat_state(rb: MRQReplayBuffer) -> dict:
    """The buffer's full state (storage prefix, writer counters, sampler priorities) as flat comparable items."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        else:
            out[prefix] = value.clone() if isinstance(value, torch.Tensor) else value

    walk("", rb.state_dict())
    return out


def _assert_same_state(a: MRQReplayBuffer, b: MRQReplayBuffer) -> None:
    sa, sb = _flat_state(a), _flat_state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        if isinstance(sa[key], torch.Tensor):
            assert torch.equal(sa[key], sb[key]), key
        else:
            assert sa[key] == sb[key], key


def test_end_episode_equals_a_truncated_last_transition():
    """Cutting a stream mid-episode and calling end_episode(s') leaves exactly the state that flagging the last
    transition truncated would have left, also for the episodes stored after it and across the ring's wrap."""
    history, channels = 3, 3
    flagged, cut = (MRQReplayBuffer(capacity=16, obs_shape=(channels * history, 4, 4), action_dim=2, pixels=True,
                                    history=history, augment=False) for _ in range(2))  # fmt: skip
    first = pixel_episode([1, 2, 3, 4, 5, 6, 7], "truncated", history, channels)
    flagged.extend(first)
    running = first.clone()
    running["next", "truncated"].zero_()
    running["next", "done"].zero_()
    cut.extend(running)
    assert cut.end_episode(first["next", "observation"][-1]) is True
    _assert_same_state(flagged, cut)
    assert len(cut) == 7 and cut.num_transitions == 6
    # No episode open any more: nothing to close.
    assert cut.end_episode(first["next", "observation"][-1]) is False
    _assert_same_state(flagged, cut)
    # The next episodes start their own frame history, and the ring wraps (7 + 4 + 7 slots > 16).
    later = [pixel_episode([11, 12, 13, 14], "terminated", history, channels),
             pixel_episode([21, 22, 23, 24, 25, 26, 27], "terminated", history, channels)]  # fmt: skip
    for td in later:
        index = flagged.extend(td)
        assert torch.equal(index, cut.extend(td))
        _assert_same_state(flagged, cut)
        batch = cut.gather(index, horizon=1)
        assert torch.equal(batch["observation"], td["observation"])
        assert torch.equal(batch["next", "observation"], td["next", "observation"])


def test_end_episode_validates_the_final_observation():
    rb = vector_buffer()
    rb.extend(vector_episode(0, 6, None))
    with pytest.raises(ValueError, match=r"shape \(4,\), expected \(3,\)"):
        rb.end_episode(torch.zeros(4))
    assert rb.end_episode(torch.full((3,), 6.0)) and len(rb) == 7 and rb.num_transitions == 6
    pixels = pixel_buffer()
    pixels.extend(pixel_episode([1, 2, 3], None, 2, 1))
    with pytest.raises(TypeError, match="uint8"):
        pixels.end_episode(torch.zeros(2, 4, 4))

"""Pose memory: exactly the k nearest poses, never a recent frame, bounded, vectorised over rollouts."""

import pytest
import torch

from worldmodel.memory import MemoryConfig, PoseMemory


def memory(capacity=8, B=2, **kw):
    return PoseMemory(MemoryConfig(capacity=capacity, **kw), B, (1, 2, 2), state_dim=5, pose_dim=3, device="cpu")


def store_poses(mem, poses):  # poses: (n, B, 3); frame j stores step j
    for j, p in enumerate(poses):
        B = p.shape[0]
        mem.store(torch.full((B, 1, 2, 2), float(j)), torch.zeros(B, 5), p, torch.full((B,), j))


def test_retrieves_exactly_the_k_nearest_poses():
    torch.manual_seed(0)
    poses = torch.rand(8, 2, 3)
    mem = memory()
    store_poses(mem, poses)
    query = torch.rand(2, 3)
    found = mem.retrieve(query, k=3)
    for b in range(2):
        expected = ((poses[:, b] - query[b]) ** 2).sum(-1).argsort()[:3]
        assert found["step"][b].tolist() == expected.tolist()
        assert found["latents"][b, :, 0, 0, 0].tolist() == expected.float().tolist()  # the frames themselves
    assert found["valid"].all()


def test_never_returns_a_frame_of_the_recent_window():
    poses = torch.zeros(8, 1, 3)
    poses[:, 0, 0] = torch.arange(8.0)
    mem = memory(B=1)
    store_poses(mem, poses)
    # The query sits on frame 7, but frames 5..7 are still in the recent window.
    found = mem.retrieve(torch.tensor([[7.0, 0, 0]]), k=2, exclude_after=torch.tensor([4]))
    assert found["step"][0].tolist() == [4, 3]
    # Too few eligible frames: the rest are marked invalid.
    found = mem.retrieve(torch.tensor([[7.0, 0, 0]]), k=3, exclude_after=torch.tensor([1]))
    assert found["valid"][0].tolist() == [True, True, False]


def test_empty_memory_returns_nothing_valid():
    found = memory().retrieve(torch.zeros(2, 3), k=2)
    assert not found["valid"].any()


def test_bounded_over_1000_frames_and_keeps_distinct_places():
    mem = memory(capacity=16, B=3)
    torch.manual_seed(0)
    for step in range(1000):
        # The arm wanders among 4 places; later frames at a place replace earlier ones.
        place = torch.tensor([[step % 4, 0.0, 0.0]] * 3) + 0.01 * torch.randn(3, 3)
        mem.store(torch.zeros(3, 1, 2, 2), torch.zeros(3, 5), place, torch.full((3,), step))
        assert int(mem.size.max()) <= 16
    assert mem.latents.shape[1] == 16 and (mem.size == 16).all()
    places = mem.pose[..., 0].round()
    for b in range(3):
        assert set(places[b].tolist()) == {0.0, 1.0, 2.0, 3.0}  # every place still remembered
    found = mem.retrieve(torch.tensor([[2.0, 0, 0]] * 3), k=1)
    assert (found["pose"][:, 0, 0].round() == 2).all() and (found["step"] > 900).all()  # the latest visit


def test_a_full_memory_keeps_frames_spread_over_the_whole_path():
    # The hand sweeps x from 0 to 1 in 101 frames into an 8-slot memory: the kept frames must cover the sweep, not
    # stay crowded at its start (as when a new frame replaces the stored one nearest to it), so any place on the path
    # retrieves a frame seen nearby.
    mem = memory(capacity=8, B=1)
    store_poses(mem, torch.stack([torch.tensor([[x, 0.0, 0.0]]) for x in torch.linspace(0, 1, 101).tolist()]))
    # (Replacing the nearest: 7 frames in x <= 0.07 and one at 1.0. Evenly spread: gaps of 1/7; a streaming cover
    # keeps gaps within a few times that.)
    kept = mem.pose[0, :, 0].sort().values
    assert kept.diff().max() <= 0.35 and kept[0] <= 0.05 and kept[-1] >= 0.95
    for x in torch.linspace(0, 1, 21).tolist():
        found = mem.retrieve(torch.tensor([[x, 0.0, 0.0]]), k=1)
        assert (found["pose"][0, 0, 0] - x).abs() <= 0.175


def test_a_place_is_refreshed_where_it_was_kept_and_does_not_creep_with_a_slow_hand():
    mem = memory(capacity=4, B=1)
    places = [torch.tensor([[float(p), 0.0, 0.0]]) for p in range(4)]
    store_poses(mem, torch.stack(places))  # 4 places 1 apart fill the memory
    # The hand creeps from place 0 towards place 1 in steps of 0.01: place 0's frame is refreshed while the hand is
    # within half the spacing of where place 0 was first seen, then nothing is stored; the place never moves.
    for i in range(1, 100):
        mem.store(torch.full((1, 1, 2, 2), 100.0 + i), torch.zeros(1, 5), torch.tensor([[0.01 * i, 0.0, 0.0]]),
                  torch.tensor([100 + i]))
    assert sorted(mem.anchor[0, :, 0].tolist()) == [0.0, 1.0, 2.0, 3.0]
    found = mem.retrieve(torch.tensor([[0.0, 0.0, 0.0]]), k=1)
    assert found["step"].item() == 150 and abs(found["pose"][0, 0, 0].item() - 0.5) < 1e-6  # the last within 0.5
    assert mem.retrieve(torch.tensor([[1.0, 0.0, 0.0]]), k=1)["step"].item() == 199  # place 1 refreshed on arrival


def test_per_rollout_clear_and_weights():
    mem = memory(B=2, pose_weights=[1.0, 0.0, 0.0])  # only x counts
    store_poses(mem, torch.tensor([[[0.0, 0, 0]] * 2, [[1.0, 5.0, 5.0]] * 2]))
    found = mem.retrieve(torch.tensor([[1.0, 0, 0]] * 2), k=1)
    assert found["step"][:, 0].tolist() == [1, 1]
    mem.clear(torch.tensor([True, False]))
    assert mem.size.tolist() == [0, 2]
    with pytest.raises(ValueError, match="pose_weights"):
        memory(pose_weights=[1.0])


def test_quaternion_distance_treats_q_and_minus_q_as_the_same_orientation():
    mem = PoseMemory(MemoryConfig(capacity=4, quaternion_indices=[3, 4, 5, 6]), 1, (1,), 7, 7, "cpu")
    identity = torch.tensor([[0.0, 0, 0, 1, 0, 0, 0]])
    flipped = torch.tensor([[0.0, 0, 0, -1, 0, 0, 0]])
    turned = torch.tensor([[0.0, 0, 0, 0.7071, 0.7071, 0, 0]])
    for step, pose in enumerate([turned, flipped]):
        mem.store(torch.zeros(1, 1), torch.zeros(1, 7), pose, torch.tensor([step]))
    found = mem.retrieve(identity, k=1)
    assert found["step"].item() == 1 and found["distance"].item() < 1e-6

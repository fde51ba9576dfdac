"""Pose-indexed memory: every clean frame of a rollout is stored with the robot pose it was seen at;
before generating a frame, the k stored frames nearest to the pose the robot is about to be at are
retrieved and join the attention context. This is what lets the model redraw a place it saw long ago
when the arm comes back to it.

Distance between poses a and b (each the `pose_indices` components of the state):

    d(a, b)^2 = sum_i w_i (a_i - b_i)^2  +  w_rot * (1 - <q_a, q_b>^2)   (the second term only when
                                                                          quaternion_indices are given)

with `pose_weights` w_i (default 1 for every component). For MetaWorld the pose is hand xyz + gripper
opening, all with weight 1 (the gripper's range, 0-1, is a few times the hand's workspace in metres,
so open/closed views are kept apart).

The memory is batched over B independent rollouts and bounded: each holds at most `capacity` frames,
one per place. A slot's place is the pose of the frame that opened it (its anchor); once full, a new
frame
  - farther from every anchor than the two closest anchors are from each other is a new place: it
    opens a slot, and of those two closest places the one with the nearer other neighbour (the more
    crowded) is forgotten;
  - within half that spacing of an anchor is a visit to that place: it replaces the frame there (the
    place's latest appearance: the object may have moved), the anchor staying where it is;
  - anywhere between is near a place already kept and is not stored.
So the kept places spread over everywhere the rollout has been (a streaming farthest-point cover) and never
creep along with the hand. The rule before this one, a new frame replacing the stored frame nearest to it,
kept the crowd of frames from the rollout's first seconds and one slot that trailed the hand, so a place
left long ago was not there to retrieve (eval/results/memory_probe_*.md). Storing and retrieving are
vectorised over rollouts and slots: the cost does not grow with rollout length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MemoryConfig:
    capacity: int = 64  # frames kept per rollout
    k: int = 2  # frames retrieved for each generated frame (0 disables memory)
    pose_weights: list[float] | None = None  # per pose component; None = all 1
    quaternion_indices: list[int] | None = None  # positions *within the pose* of a (w, x, y, z) quaternion
    rotation_weight: float = 1.0


class PoseMemory:
    """Stores (latents, state, pose, step) per rollout; `retrieve(query_pose, k, exclude_after)`."""

    def __init__(self, config: MemoryConfig, batch_size: int, latent_shape: tuple[int, ...], state_dim: int,
                 pose_dim: int, device, dtype=torch.float32):
        self.config = config
        B, C = batch_size, config.capacity
        self.latents = torch.zeros(B, C, *latent_shape, device=device, dtype=dtype)
        self.state = torch.zeros(B, C, state_dim, device=device, dtype=dtype)
        self.pose = torch.zeros(B, C, pose_dim, device=device, dtype=dtype)
        self.anchor = torch.zeros(B, C, pose_dim, device=device, dtype=dtype)  # the pose that opened the slot
        self.step = torch.full((B, C), -1, dtype=torch.long, device=device)
        self.valid = torch.zeros(B, C, dtype=torch.bool, device=device)
        weights = config.pose_weights or [1.0] * pose_dim
        if len(weights) != pose_dim:
            raise ValueError(f"pose_weights: expected {pose_dim} weights, got {len(weights)}")
        self.weights = torch.tensor(weights, device=device, dtype=dtype)
        if config.quaternion_indices is not None and len(config.quaternion_indices) != 4:
            raise ValueError(f"quaternion_indices: expected 4 indices, got {config.quaternion_indices}")

    @property
    def size(self) -> torch.Tensor:
        return self.valid.sum(dim=1)

    def distance(self, query: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
        """query (B, P), stored (B, C, P) -> squared distance (B, C)."""
        diff = stored - query[:, None]
        quat = self.config.quaternion_indices
        if quat is None:
            return (self.weights * diff.pow(2)).sum(-1)
        linear = [i for i in range(query.shape[-1]) if i not in quat]
        d = (self.weights[linear] * diff[..., linear].pow(2)).sum(-1)
        dot = (stored[..., quat] * query[:, None, quat]).sum(-1)
        return d + self.config.rotation_weight * (1 - dot.pow(2))

    def clear(self, rollouts: torch.Tensor | None = None) -> None:
        """Forget everything of the rollouts where `rollouts` (B,) is True (all if None)."""
        rows = torch.ones_like(self.valid[:, 0]) if rollouts is None else rollouts
        self.valid[rows] = False
        self.step[rows] = -1
        for stored in (self.latents, self.state, self.pose, self.anchor):  # a NaN left behind would poison distances
            stored[rows] = 0.0

    def store(self, latents: torch.Tensor, state: torch.Tensor, pose: torch.Tensor, step: torch.Tensor,
              active: torch.Tensor | None = None) -> None:
        """Add one frame per rollout: latents (B, ...), state (B, S), pose (B, P), step (B,).
        `active` (B,) bool: rollouts that store this time (default all)."""
        B = latents.shape[0]
        rows = torch.arange(B, device=latents.device)
        slot, opens, stores = self.slot_for(pose)
        if active is not None:
            stores = stores & active
        rows, slot, opens = rows[stores], slot[stores], opens[stores]
        latents, state, pose, step = latents[stores], state[stores], pose[stores], step[stores]
        self.latents[rows, slot] = latents.to(self.latents.dtype)
        self.state[rows, slot] = state.to(self.state.dtype)
        self.pose[rows, slot] = pose.to(self.pose.dtype)
        self.anchor[rows[opens], slot[opens]] = pose[opens].to(self.anchor.dtype)
        self.step[rows, slot] = step
        self.valid[rows, slot] = True

    def slot_for(self, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where a new frame at `pose` (B, P) goes (the rule in the module docstring): slot (B,), opens (B,) (a new
        place: the slot's anchor becomes this pose) and stores (B,) (False: near a kept place, not stored)."""
        B, C, P = self.anchor.shape
        free = ~self.valid
        has_free = free.any(dim=1)
        if has_free.all():  # still filling (every frame of a rollout shorter than the memory): no place is forgotten
            return free.float().argmax(dim=1), has_free, has_free
        to_new = self.distance(pose, self.anchor).masked_fill(~self.valid, float("inf"))  # (B, C)
        to_new, nearest = to_new.min(dim=1)
        between = self.distance(self.anchor.reshape(B * C, P), self.anchor.repeat_interleave(C, dim=0))
        between = between.reshape(B, C, C).masked_fill(torch.eye(C, dtype=torch.bool, device=pose.device),
                                                       float("inf"))  # (B, C, C)
        spacing, pair = between.reshape(B, C * C).min(dim=1)  # squared distance of the closest two places
        first, second = pair // C, pair % C
        rows = torch.arange(B, device=pose.device)
        crowding = []  # each one's distance to its nearest place other than the two
        for this, other in ((first, second), (second, first)):
            crowding.append(between[rows, this].scatter(1, other[:, None], float("inf")).min(dim=1).values)
        crowded = torch.where(crowding[0] <= crowding[1], first, second)
        new_place = to_new > spacing
        visit = to_new <= spacing / 4  # within half the spacing (distances are squared)
        slot = torch.where(has_free, free.float().argmax(dim=1), torch.where(new_place, crowded, nearest))
        return slot, has_free | new_place, has_free | new_place | visit

    def retrieve(self, query_pose: torch.Tensor, k: int, exclude_after: torch.Tensor | None = None):
        """The k stored frames nearest to `query_pose` (B, P), skipping frames with step > exclude_after
        (B,) (those still in the recent window). Returns a dict of latents (B, k, ...), state (B, k, S),
        pose (B, k, P), step (B, k), valid (B, k) (False where fewer than k frames qualify), distance (B, k)."""
        eligible = self.valid.clone()
        if exclude_after is not None:
            eligible &= self.step <= exclude_after[:, None]
        d = self.distance(query_pose, self.pose).masked_fill(~eligible, float("inf"))
        k = min(k, self.config.capacity)
        dist, slot = d.topk(k, dim=1, largest=False)  # (B, k), nearest first
        rows = torch.arange(d.shape[0], device=d.device)[:, None]
        return {
            "latents": self.latents[rows, slot], "state": self.state[rows, slot], "pose": self.pose[rows, slot],
            "step": self.step[rows, slot], "valid": torch.isfinite(dist), "distance": dist,
        }

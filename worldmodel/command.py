"""The commanded pose: where a delta-position controller is driving the robot.

Robots in manipulation datasets are mostly driven by pose deltas: MetaWorld moves a mocap target by
action[:3] / 100 per env step, clipped to the workspace, and the hand follows it a few steps late. The
target itself is not in the observation, but it is a function of the actions alone: start at the pose
of the episode's first frame and add each step's action times a gain, clipped to the workspace at every
step. A world model that is told this target for every frame (VideoDiTConfig.condition_on_command) only
has to learn how the hand lags behind it and what it pushes, instead of integrating the actions itself
over a long open-loop rollout, where every small error of a predicted step would be summed.

One copy of the integration (`integrate_commands`), used by the training clips (from the episode's
first frame) and by both samplers (from the rollout's first frame), and one fit of the gain.
"""

from __future__ import annotations

import numpy as np
import torch


def integrate_commands(start: torch.Tensor, actions: torch.Tensor, gain: torch.Tensor,
                       low: torch.Tensor | None = None, high: torch.Tensor | None = None) -> torch.Tensor:
    """The commanded pose after each env step. start (B, P) the command before the first action; actions
    (B, K, A) raw env actions in order; gain (A, P); low/high (P,) the workspace, clipped at every step (a
    controller saturates at the wall and then comes back from it). -> (B, K, P)."""
    command, out = start, []
    for step in range(actions.shape[1]):
        command = command + actions[:, step] @ gain
        if low is not None:
            command = torch.minimum(torch.maximum(command, low), high)
        out.append(command)
    return torch.stack(out, dim=1) if out else start.new_zeros(start.shape[0], 0, start.shape[1])


def one_step_gain(poses: list[np.ndarray], actions: list[np.ndarray]) -> np.ndarray:
    """(A, P) least-squares pose change per env action over every step of every episode. poses: per episode
    (L, P); actions: per episode (L, A), action t taken at pose t."""
    X = np.concatenate([a[:-1] for a in actions]).astype(np.float64)
    Y = np.concatenate([np.diff(p, axis=0) for p in poses]).astype(np.float64)
    gain, *_ = np.linalg.lstsq(X, Y, rcond=None)
    return gain


def fit_command_gain(poses: list[np.ndarray], actions: list[np.ndarray], low: np.ndarray, high: np.ndarray,
                     factors=np.linspace(0.5, 3.0, 26)) -> list[list[float]]:
    """(A, P) diagonal-dominant gain whose integrated command stays nearest the recorded pose, per pose
    dimension: its action dimension is the one the one-step least-squares fit relies on most, and its gain is
    that fit's times the factor with the smallest mean open-loop error over whole episodes. The one-step fit
    alone is biased low (the hand lags its target and stops at the workspace's walls), which a long integration
    would multiply. poses: per episode (L, P) recorded; actions: per episode (L, A), action t taken at pose t."""
    one_step = one_step_gain(poses, actions)  # (A, P)
    A, P = one_step.shape
    gain = np.zeros((A, P))
    lengths = [len(p) for p in poses]
    T = max(lengths)
    # Episodes padded to one length with zero actions (the command holds still there) and masked out of the error.
    acts = np.zeros((len(poses), T, A))
    target = np.zeros((len(poses), T, P))
    mask = np.zeros((len(poses), T), dtype=bool)
    for i, (p, a) in enumerate(zip(poses, actions)):
        acts[i, :len(a)], target[i, :len(p)], mask[i, :len(p)] = a, p, True
    for dim in range(P):
        source = int(np.abs(one_step[:, dim]).argmax())
        gains = one_step[source, dim] * np.asarray(factors)  # (G,)
        command = np.repeat(target[:, :1, dim], len(gains), axis=1)  # (E, G) the command at step 0: the pose
        error = np.zeros(len(gains))
        for t in range(1, T):
            command = np.clip(command + acts[:, t - 1, source, None] * gains, low[dim], high[dim])
            error += (np.abs(command - target[:, t, dim, None]) * mask[:, t, None]).sum(axis=0)
        gain[source, dim] = gains[int(error.argmin())]
    return gain.round(6).tolist()

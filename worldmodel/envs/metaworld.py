"""MetaWorld v3 as a multi-camera gymnasium env: the ground-truth simulator of the embedded default.

Observations use LeRobot's names so that a policy, a recorded dataset and the imagined env all
speak the same keys:

    observation.images.<camera>   uint8 (H, W, 3), the right way up
    observation.state             float32 (39,), MetaWorld's own observation vector
    info["is_success"]            bool

The state vector (MetaWorld v3, goal observable) is laid out as
    [0:3] hand (end-effector) position, [3] gripper opening in [0, 1],
    [4:7] object position, [7:11] object quaternion, [11:18] second object (unused by push),
    [18:36] the same 18 numbers one step earlier, [36:39] goal position.
The end-effector pose that memory retrieval indexes on is `state[POSE_SLICE]` (hand xyz + gripper).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# MuJoCo picks its GL backend at import time; headless machines need EGL (Mesa on CPU).
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import mujoco
import numpy as np

from worldmodel.envs.spaces import action_space, observation_space

STATE_DIM = 39
POSE_SLICE = slice(0, 4)  # hand xyz + gripper opening
GOAL_SLICE = slice(36, 39)  # the goal position; MetaWorld's scripted experts steer by it
STATE_NAMES = (
    ["hand_x", "hand_y", "hand_z", "gripper"]
    + ["obj_x", "obj_y", "obj_z", "obj_qw", "obj_qx", "obj_qy", "obj_qz"]
    + [f"obj2_{i}" for i in range(7)]
    + [f"prev_{i}" for i in range(18)]
    + ["goal_x", "goal_y", "goal_z"]
)
ACTION_NAMES = ["dx", "dy", "dz", "grip"]
# (A, P): pose change per env action. MetaWorld moves the hand by action[:3] / 100 per step; the sampler's
# memory uses it to ask "where will the arm be" (SamplerConfig.action_to_pose).
ACTION_TO_POSE = [[0.01, 0, 0, 0], [0, 0.01, 0, 0], [0, 0, 0.01, 0], [0, 0, 0, 0]]
CONTROL_FPS = 80  # MetaWorld: frame_skip 5 x timestep 0.0025 s


@dataclass(frozen=True)
class StateSuccessRule:
    """A task's success read off the state vector: state[point] + offset within `threshold` m of state[goal]."""

    point: tuple[int, ...]
    goal: tuple[int, ...] = tuple(range(GOAL_SLICE.start, GOAL_SLICE.stop))
    threshold: float = 0.05
    offset: tuple[float, ...] = (0.0, 0.0, 0.0)


# The hand in the state is the end-effector body; MetaWorld scores reach by the fingertips' centre (tcp_center),
# 4.5 cm below it (measured over 600 steps of reach-v3: 4.49 +- 0.01 cm in z, 0.3 +- 0.2 cm in y).
HAND_TO_TCP = (0.0, 0.0, -0.045)
# MetaWorld v3's own `evaluate_state` success for the tasks whose rule is a distance in the state: push and
# pick-place move the object to the goal, reach moves the fingertips. On reach the rule agrees with the
# simulator's flag on 98.8% of steps (the rest are within the y jitter of the 5 cm edge).
STATE_SUCCESS_RULES = {
    "push-v3": StateSuccessRule(point=(4, 5, 6)),
    "push-back-v3": StateSuccessRule(point=(4, 5, 6), threshold=0.07),
    "pick-place-v3": StateSuccessRule(point=(4, 5, 6), threshold=0.07),
    "reach-v3": StateSuccessRule(point=(0, 1, 2), offset=HAND_TO_TCP),
}


@dataclass
class MetaWorldConfig:
    task: str = "push-v3"
    cameras: list[str] = field(default_factory=lambda: ["corner", "corner2", "gripperPOV"])
    image_size: int = 64
    max_episode_steps: int = 120


def expert_policy_for(task: str):
    """MetaWorld's own scripted expert for `task` (e.g. 'push-v3' -> SawyerPushV3Policy)."""
    import metaworld.policies as mw_policies

    class_name = "Sawyer" + "".join(part.capitalize() for part in task.split("-")) + "Policy"
    if not hasattr(mw_policies, class_name):
        raise ValueError(f"task={task!r}: MetaWorld has no scripted expert named {class_name}")
    return getattr(mw_policies, class_name)()


def state_success_rule(task: str) -> StateSuccessRule:
    """The simulator's success rule for `task` as a distance in the state (the state judge's rule)."""
    if task not in STATE_SUCCESS_RULES:
        raise ValueError(f"task={task!r}: its success is not a distance in the state; tasks with a state rule: "
                         f"{sorted(STATE_SUCCESS_RULES)} (judge it with a trained SuccessJudge instead)")
    return STATE_SUCCESS_RULES[task]


class MetaWorldMultiViewEnv(gym.Env):
    """One MetaWorld task rendered from several cameras; `reset(seed=s)` reproduces the same scene."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FPS}

    def __init__(self, config: MetaWorldConfig | None = None, **overrides):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        self.config = config or MetaWorldConfig(**overrides)
        cfg = self.config
        key = f"{cfg.task}-goal-observable"
        if key not in ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE:
            raise ValueError(f"task={cfg.task!r} is not a MetaWorld v3 task")
        self._env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[key]()
        # Let every reset draw a new object/goal layout from the env's own seeded generator.
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True
        self._env.max_path_length = max(self._env.max_path_length, cfg.max_episode_steps)
        self.model, self.data = self._env.model, self._env.data
        self.task = cfg.task
        self.task_description = f"MetaWorld {cfg.task}"

        known = [mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(self.model.ncam)]
        for cam in cfg.cameras:
            if cam not in known:
                raise ValueError(f"cameras: {cam!r} is not a camera of {cfg.task}; expected one of {known}")
        self._camera_ids = [self.model.camera(c).id for c in cfg.cameras]

        # Shadows, reflections and multisampling cost ~12x on a software GL and add nothing the
        # world model needs at 64-256 px.
        self.model.vis.quality.shadowsize = 0
        self.model.vis.quality.offsamples = 0
        self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, cfg.image_size)
        self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, cfg.image_size)
        self._renderer = None  # no cameras (state-only evaluation): nothing to render
        if cfg.cameras:
            self._renderer = mujoco.Renderer(self.model, cfg.image_size, cfg.image_size)
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False

        # MetaWorld's corner cameras are rolled 180 degrees (their image-up axis points at the floor).
        # Rolling the image back is the same as rolling the camera about its optical axis, which the
        # extrinsics below account for.
        mujoco.mj_forward(self.model, self.data)
        self._rolled = [bool(self.data.cam_xmat[i].reshape(3, 3)[2, 1] < 0) for i in self._camera_ids]

        self.observation_space = observation_space([f"observation.images.{c}" for c in cfg.cameras],
                                                   cfg.image_size, STATE_DIM)
        self.action_space = action_space(len(ACTION_NAMES))
        self._steps = 0

    # -- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.seed(seed)
        state, _ = self._env.reset()
        self._steps = 0
        return self._observation(state), {"is_success": False}

    def step(self, action):
        state, reward, truncated, info = self._advance(action)
        return self._observation(state), reward, False, truncated, info

    def step_state_only(self, action):
        """`step` without rendering the cameras: the observation holds only `observation.state`. Rendering is
        most of a step's cost, and a rollout of a state policy that keeps a frame only every few steps
        (eval.rank) needs no picture in between; the physics, and every later rendered frame, are the same."""
        state, reward, truncated, info = self._advance(action)
        return {"observation.state": state.astype(np.float32)}, reward, False, truncated, info

    def _advance(self, action):
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (4,):
            raise ValueError(f"action: expected shape (4,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action: contains NaN or inf: {action}")
        state, reward, _, _, info = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        truncated = self._steps >= self.config.max_episode_steps
        info = {"is_success": bool(info["success"]), **{k: v for k, v in info.items() if k != "success"}}
        return state, float(reward), truncated, info

    def render(self):
        return np.concatenate([self._render_camera(i) for i in range(len(self._camera_ids))], axis=1)

    def close(self):
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None

    # -- what the world model needs ------------------------------------------------------------
    @property
    def end_effector_pose(self) -> np.ndarray:
        """Hand position (x, y, z) and gripper opening: the pose memory retrieval indexes on."""
        return self._env._get_obs()[POSE_SLICE].astype(np.float32)

    def camera_parameters(self) -> dict[str, dict[str, np.ndarray]]:
        """Per camera: `intrinsics` (3, 3) in pixels and `extrinsics` (4, 4) world-to-camera (OpenCV axes:
        x right, y down, z forward), for the images as returned (rolled cameras already rolled back).
        The wrist camera moves with the arm, so call this after every step when you need it."""
        size = self.config.image_size
        params = {}
        for cam, cam_id, rolled in zip(self.config.cameras, self._camera_ids, self._rolled):
            focal = 0.5 * size / np.tan(np.deg2rad(self.model.cam_fovy[cam_id]) / 2)
            intrinsics = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]], dtype=np.float64)
            # MuJoCo camera frame: x right, y up, z backward. OpenCV: x right, y down, z forward.
            cam_to_world = self.data.cam_xmat[cam_id].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
            if rolled:
                cam_to_world = cam_to_world @ np.diag([-1.0, -1.0, 1.0])
            extrinsics = np.eye(4)
            extrinsics[:3, :3] = cam_to_world.T
            extrinsics[:3, 3] = -cam_to_world.T @ self.data.cam_xpos[cam_id]
            params[cam] = {"intrinsics": intrinsics, "extrinsics": extrinsics}
        return params

    # -- internals -----------------------------------------------------------------------------
    def _render_camera(self, index: int) -> np.ndarray:
        self._renderer.update_scene(self.data, camera=self._camera_ids[index])
        image = self._renderer.render()
        if self._rolled[index]:
            image = image[::-1, ::-1]
        return np.ascontiguousarray(image)

    def _observation(self, state: np.ndarray) -> dict[str, np.ndarray]:
        obs = {f"observation.images.{cam}": self._render_camera(i) for i, cam in enumerate(self.config.cameras)}
        obs["observation.state"] = state.astype(np.float32)
        return obs

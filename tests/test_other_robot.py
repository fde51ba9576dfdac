"""A robot that is not MetaWorld: one non-square camera, 6-d joint-space actions and state, 30 fps, in a
LeRobotDataset v3 written here. Dataset, training and imagination must work on it unchanged."""

import numpy as np
import pytest
import torch

from worldmodel.dataset import ClipDataset, DatasetConfig, write_episode

H, W, JOINTS, FPS = 24, 40, 6, 30


def frame_for(joints: np.ndarray) -> np.ndarray:
    """A picture of the arm: a green square whose place follows joints 0 and 1; red bars at the left and
    right edges (outside the centred square, so a centre crop removes them)."""
    image = np.full((H, W, 3), 40, np.uint8)
    image[:, :4] = image[:, -4:] = (255, 0, 0)
    y = int(np.clip(12 + 8 * joints[0], 2, H - 6))
    x = int(np.clip(20 + 8 * joints[1], 10, W - 14))
    image[y:y + 4, x:x + 4] = (0, 255, 0)
    return image


@pytest.fixture(scope="module")
def joint_robot_root(tmp_path_factory):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path_factory.mktemp("other_robot") / "arm"
    features = {"observation.images.wrist": {"dtype": "video", "shape": (H, W, 3), "names": ["height", "width", "channels"]},
                "observation.state": {"dtype": "float32", "shape": (JOINTS,), "names": [f"joint{i}" for i in range(JOINTS)]},
                "action": {"dtype": "float32", "shape": (JOINTS,), "names": [f"joint{i}.velocity" for i in range(JOINTS)]}}
    dataset = LeRobotDataset.create("test/arm", fps=FPS, features=features, root=root, robot_type="arm6")
    rng = np.random.default_rng(0)
    for _ in range(3):
        joints, frames = np.zeros(JOINTS, np.float32), []
        for _ in range(30):
            action = rng.uniform(-1, 1, JOINTS).astype(np.float32)
            frames.append({"observation.images.wrist": frame_for(joints), "observation.state": joints.copy(),
                           "action": action})
            joints = np.clip(joints + 0.05 * action, -1, 1).astype(np.float32)
        write_episode(dataset, frames, "move the arm")
    dataset.finalize()
    return root


def test_a_joint_space_robot_with_a_non_square_camera(joint_robot_root, tmp_path, capsys):
    from worldmodel.cli import main as wm
    from worldmodel.world import WorldModel

    common = [f"--root={joint_robot_root}", "--repo_id=test/arm", "--camera_keys=[wrist]", "--image_size=16",
              "--frame_stride=2", "--pose_indices=[0,1,2]"]
    wm(["dataset", *common, "--clip_frames=4"])
    assert "action/state 6 / 6 dims" in capsys.readouterr().out
    clips = ClipDataset(DatasetConfig(root=str(joint_robot_root), repo_id="test/arm", camera_keys=["wrist"],
                                      image_size=16, frame_stride=2, clip_frames=4, pose_indices=[0, 1, 2]))
    first = clips.cache.images[0, 0]  # (16, 16, 3): the centred square of the 24x40 view, not stretched
    assert first[..., 0].max() < 200, "the red edge bars survived: the view was stretched, not cropped"
    assert clips.action_dim == clips.state_dim == JOINTS and np.asarray(clips.action_to_pose()).shape == (6, 3)

    out = tmp_path / "run"
    wm(["train", *[a.replace("--", "--dataset.", 1) for a in common], "--dataset.clip_frames=4",
        "--dataset.memory_frames=2", "--model.hidden_size=32", "--model.depth=1", "--model.num_heads=2",
        "--model.patch_size=8", "--train.steps=2", "--train.batch_size=2", "--train.num_workers=0",
        "--train.val_episodes=1", "--train.val_clips=2", "--train.val_sampling_steps=1", f"--output_dir={out}"])
    world = WorldModel.from_pretrained(out / "model", batch_size=1, device="cpu")
    obs = world.reset(clips.first_observations([0]))
    assert obs["observation.images.wrist"].shape == (1, 16, 16, 3) and obs["observation.state"].shape == (1, 6)
    after = world.step(torch.zeros(1, 2 * 2, JOINTS))
    assert after["observation.images.wrist"].shape == (1, 16, 16, 3) and after["observation.state"].shape == (1, 6)
    assert torch.isfinite(after["observation.state"]).all()

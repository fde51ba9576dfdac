import json

import numpy as np
import pytest

from eval.picture_swap import PictureSwapConfig, picture_swap


def test_swapping_in_every_real_picture_and_the_state_makes_the_loop_metaworld(tiny_world_model_dir, tmp_path):
    """With the real pictures of every view and the real state swapped in after each frame, even an untrained model's
    loop is MetaWorld's episode exactly; with nothing swapped it is not."""
    common = dict(model=str(tiny_world_model_dir), episodes=1, max_episode_steps=8, results_dir=str(tmp_path))
    everything = picture_swap(PictureSwapConfig(**common, real_views=[0, 1], real_state=True, run="all"))
    assert np.allclose(everything["loop"]["lowest_hand_z_cm"], everything["real"]["lowest_hand_z_cm"], atol=1e-4)
    assert everything["swapped"][-1] == "observation.state"
    nothing = picture_swap(PictureSwapConfig(**common, run="none"))
    assert not np.allclose(nothing["loop"]["final_object_to_goal_cm"] + nothing["loop"]["lowest_hand_z_cm"],
                           nothing["real"]["final_object_to_goal_cm"] + nothing["real"]["lowest_hand_z_cm"], atol=1e-3)
    saved = json.loads((tmp_path / "picture_swap_all.json").read_text())
    assert saved["command"].endswith("--real_views=[0,1] --real_state=True --run=all")
    assert "| 0 |" in (tmp_path / "picture_swap_all.md").read_text()


def test_a_view_the_model_does_not_have_is_refused(tiny_world_model_dir, tmp_path):
    with pytest.raises(ValueError, match="real_views"):
        picture_swap(PictureSwapConfig(model=str(tiny_world_model_dir), real_views=[7], results_dir=str(tmp_path)))

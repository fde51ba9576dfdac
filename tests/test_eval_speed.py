"""eval.speed times the network it is given: a model folder's own (config and weights), or a preset's."""

import pytest
import torch

from eval.speed import SpeedBenchConfig, command, timed_model


def test_a_model_folder_is_timed_with_its_own_network_and_weights(tiny_world_model_dir):
    from worldmodel.model import VideoDiT

    cfg = SpeedBenchConfig(model=str(tiny_world_model_dir))
    model = timed_model(cfg)
    saved = VideoDiT.from_pretrained(tiny_world_model_dir)
    assert model.cfg.hidden_size == 64 and model.cfg.num_views == 2  # not the preset's 192 wide, 3 views
    assert (cfg.views, cfg.image_size) == (2, 32)  # the report describes the timed network
    for (name, p), q in zip(model.named_parameters(), saved.parameters()):
        assert p.dtype == torch.float32, name
        torch.testing.assert_close(p, q.float())
    assert command(cfg) == f"python -m eval.speed --model={tiny_world_model_dir}"


def test_a_folder_of_another_kind_is_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text('{"_class_name": "SuccessJudge"}')
    with pytest.raises(ValueError, match="SuccessJudge|judge"):
        timed_model(SpeedBenchConfig(model=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        timed_model(SpeedBenchConfig(model=str(tmp_path / "no_such_model")))


def test_without_a_folder_the_preset_is_timed():
    cfg = SpeedBenchConfig(preset="tiny", batch_sizes=[1, 16])
    model = timed_model(cfg)
    assert model.cfg.hidden_size == 192 and model.cfg.num_views == 3
    assert command(cfg) == "python -m eval.speed --preset=tiny --batch_sizes=[1,16]"

"""Ranking metrics against hand-computed values (including SIMPLER's argument-order trap), and frame metrics."""

import math

import pytest
import numpy as np
import torch

from worldmodel.metrics import bootstrap_ranking_metrics, mmrv, pearson, psnr, spearman, ssim


def test_mmrv_by_hand_and_the_argument_order_trap():
    real, imagined = [0.1, 0.5, 0.9], [0.2, 0.6, 0.4]
    # Only policies 1 and 2 are swapped; their *real* gap is 0.4 and it is the worst violation of both.
    assert mmrv(real=real, imagined=imagined) == pytest.approx((0 + 0.4 + 0.4) / 3)
    # With the roles swapped the weight would be the imagined gap 0.2: a different, wrong number.
    assert mmrv(real=imagined, imagined=real) == pytest.approx((0 + 0.2 + 0.2) / 3)
    assert mmrv(real=[0.0, 0.5, 1.0], imagined=[0.1, 0.2, 0.3]) == 0.0  # same order, any scale
    assert mmrv(real=[0.0, 0.5, 1.0], imagined=[1.0, 0.5, 0.0]) == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    # An imagined tie between really different policies counts once, in the row of the really better
    # policy (the tie fails to put it above the worse one: 0.6); the worse one is "not above" in both (0).
    assert mmrv(real=[0.2, 0.8], imagined=[0.5, 0.5]) == pytest.approx((0.0 + 0.6) / 2)
    with pytest.raises(ValueError, match="real/imagined"):
        mmrv(real=[0.1, 0.2], imagined=[0.1])


def simpler_mmrv(sim, real):
    """SIMPLER's mean_maximum_rank_violation, transcribed loop for loop from its definition."""
    violations = []
    for i in range(len(sim)):
        worst = 0.0
        for j in range(len(sim)):
            if (sim[i] > sim[j]) != (real[i] > real[j]):
                worst = max(worst, abs(real[i] - real[j]))
        violations.append(worst)
    return float(np.mean(violations))


def test_mmrv_equals_simpler_on_tied_rates():
    rng = np.random.default_rng(0)
    differs_from_the_mirrored_comparison = 0
    for _ in range(500):
        # 10 policies x 20 episodes: every rate is a multiple of 0.05, so ties are frequent.
        real, imagined = rng.integers(0, 21, 10) / 20, rng.integers(0, 21, 10) / 20
        assert mmrv(real=real, imagined=imagined) == pytest.approx(simpler_mmrv(imagined, real), abs=1e-12)
        mirrored = (imagined[:, None] < imagined[None, :]) != (real[:, None] < real[None, :])
        alt = float((np.abs(real[:, None] - real[None, :]) * mirrored).max(axis=1).mean())
        differs_from_the_mirrored_comparison += not np.isclose(alt, simpler_mmrv(imagined, real))
    assert differs_from_the_mirrored_comparison > 50  # the cases this test exists for do occur


def test_pearson_and_spearman_by_hand():
    x, y = [1.0, 2.0, 3.0], [2.0, 4.0, 7.0]
    mx, my = 2.0, 13 / 3
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    expected = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert pearson(x, y) == pytest.approx(expected)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]))  # undefined, not a fake number


def test_bootstrap_intervals_cover_the_point_and_are_reproducible():
    real = [[0] * 18 + [1] * 2, [0] * 10 + [1] * 10, [0] * 2 + [1] * 18]
    imagined = [[0] * 16 + [1] * 4, [0] * 11 + [1] * 9, [0] * 3 + [1] * 17]
    a = bootstrap_ranking_metrics(real, imagined, n_boot=300, seed=1)
    b = bootstrap_ranking_metrics(real, imagined, n_boot=300, seed=1)
    assert a == b
    assert a["spearman"]["value"] == pytest.approx(1.0) and a["mmrv"]["value"] == 0.0
    for k in ("pearson", "spearman", "mmrv"):
        low, high = a[k]["interval"]
        assert low <= a[k]["value"] + 1e-9 and a[k]["value"] <= high + 1e-9


def test_psnr_and_ssim():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    assert (psnr(img, img) > 100).all()
    shifted = (img + 0.1).clamp(-1, 1)
    mse = (shifted - img).pow(2).mean(dim=(-3, -2, -1))
    torch.testing.assert_close(psnr(shifted, img), 10 * torch.log10(4 / mse))
    assert ssim(img, img).shape == (2, 3)
    torch.testing.assert_close(ssim(img, img), torch.ones(2, 3))
    noisy = (img + 0.3 * torch.randn_like(img)).clamp(-1, 1)
    assert (ssim(noisy, img) < 0.9).all() and (ssim(noisy, img) > ssim(torch.rand_like(img) * 2 - 1, img)).all()


def test_open_loop_fidelity_per_view_and_horizon(tiny_world_model_dir, tiny_dataset_root):
    from worldmodel.dataset import ClipDataset, DatasetConfig
    from worldmodel.metrics import open_loop_fidelity
    from worldmodel.sampler import SamplerConfig
    from worldmodel.world import WorldModel

    world = WorldModel.from_pretrained(tiny_world_model_dir, batch_size=2, device="cpu",
                                       sampler_config=SamplerConfig(steps=2, window=2))
    clips = ClipDataset(DatasetConfig(root=str(tiny_dataset_root), repo_id="test/tiny",
                                      camera_keys=list(world.camera_keys), image_size=32, frame_stride=4,
                                      clip_frames=1))
    result = open_loop_fidelity(world, clips, [0, 2], horizon=5)
    assert result["horizon_frames"] == [1, 2, 3, 4, 5] and result["horizon_seconds"][0] == 4 / 80
    for key in world.camera_keys:
        assert len(result["psnr"][key]) == 5 and len(result["ssim"][key]) == 5
        assert all(0 < p < 60 for p in result["psnr"][key])
    with pytest.raises(ValueError, match="horizon"):
        open_loop_fidelity(world, clips, [0, 2], horizon=10)


def test_revisit_frames_finds_returns_after_leaving():
    from worldmodel.metrics import revisit_frames

    a, far = np.zeros(3), np.array([0.3, 0.0, 0.0])
    # Frames 0-4 at A, 5-14 far away, 15-19 back at A.
    path = np.stack([a] * 5 + [far] * 10 + [a] * 5)
    assert revisit_frames(path, min_gap=12).tolist() == [15, 16, 17, 18, 19]
    # Too short an absence (the earlier view is still in the recent context): no revisit.
    assert revisit_frames(path, min_gap=16).tolist() == [16, 17, 18, 19]
    assert revisit_frames(path, min_gap=20).size == 0
    # Staying near A the whole time is not a revisit, however long.
    still = np.stack([a + 0.01 * np.sin(i) for i in range(40)])
    assert revisit_frames(still, min_gap=12).size == 0
    # Leaving only 5 cm (less than `away`) is not leaving.
    short_trip = np.stack([a] * 5 + [np.array([0.05, 0, 0])] * 10 + [a] * 5)
    assert revisit_frames(short_trip, min_gap=12).size == 0
    # The smallest gap: back two frames after being away for one.
    assert revisit_frames(np.stack([a, far, a]), min_gap=1).tolist() == [2]


def test_the_success_rule_reads_the_last_frames_or_any():
    """SuccessRule: final frame (default), any of the last k, or any frame; batched over leading dimensions.
    A success that is lost before the end counts only for the rules that look that far back."""
    import pytest

    from worldmodel.metrics import SuccessRule

    lost_at_the_end = [False, True, True, False]
    held = [False, False, True, True]
    assert not SuccessRule()(lost_at_the_end) and SuccessRule()(held)
    assert not SuccessRule(last_frames=1)(lost_at_the_end)
    assert SuccessRule(last_frames=2)(lost_at_the_end) and SuccessRule(last_frames=None)(lost_at_the_end)
    assert SuccessRule(last_frames=None)([[False] * 4, lost_at_the_end]).tolist() == [False, True]
    assert "final frame" in SuccessRule().describe() and "last 3" in SuccessRule(3).describe()
    with pytest.raises(ValueError, match="success.last_frames"):
        SuccessRule(last_frames=0)


def test_auroc_counts_pairs_ordered_right_and_ties_half():
    from worldmodel.metrics import auroc

    assert auroc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert auroc([1, 1, 0, 0], [0.1, 0.2, 0.9, 0.8]) == 0.0
    assert auroc([1, 0], [0.5, 0.5]) == 0.5
    assert auroc([1, 1, 0], [1, 0, 0]) == 0.75  # one pair right, one tie
    assert np.isnan(auroc([1, 1], [0.3, 0.4]))

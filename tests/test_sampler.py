"""Streaming sampler: the KV cache changes nothing but cost; sinks and memory matter; everything stays bounded."""

from dataclasses import replace

import pytest
import torch

from worldmodel.memory import MemoryConfig
from worldmodel.model import build_config, make_model
from worldmodel.sampler import SamplerConfig, StreamingSampler

B, V, SIZE, STRIDE = 2, 2, 16, 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = build_config("tiny", dict(hidden_size=64, depth=2, num_heads=2), num_views=V, latent_size=SIZE,
                       image_size=SIZE, frame_stride=STRIDE, camera_keys=["a", "b"], max_offset=12,
                       command_gain=(0.1 * torch.eye(4)).tolist())  # the commanded pose moves with the actions
    m = make_model(cfg).eval()
    with torch.no_grad():  # every weight random, so that no property holds by accident of zero init
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def start(model, config, use_cache=True, seed=0, batch=B):
    g = torch.Generator().manual_seed(seed)
    sampler = StreamingSampler(model, config, batch, use_cache=use_cache)
    sampler.reset(torch.randn(batch, 1, V, 3, SIZE, SIZE, generator=g), torch.randn(batch, 1, 39, generator=g))
    return sampler


def actions(n, seed=1, batch=B):
    return torch.randn(batch, n, STRIDE, 4, generator=torch.Generator().manual_seed(seed))


def run(sampler, n, seed=2, action_seed=1):
    return sampler.rollout(actions(n, action_seed, sampler.B), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rolling,steps,window", [(True, 4, 2), (True, 3, 3), (False, 3, 2)])
def test_cached_rollout_equals_recomputing_the_history_every_step(model, rolling, steps, window):
    config = SamplerConfig(steps=steps, window=window, rolling=rolling, recent_frames=8, memory=MemoryConfig(k=0))
    cached, cached_state = run(start(model, config), 7)
    naive, naive_state = run(start(model, config, use_cache=False), 7)
    assert cached.shape == (B, 7, V, 3, SIZE, SIZE)
    torch.testing.assert_close(cached, naive, rtol=0, atol=1e-4)
    torch.testing.assert_close(cached_state, naive_state, rtol=0, atol=1e-4)


def test_the_commanded_pose_follows_every_action_from_the_reset_pose(model):
    """The sampler's command after a rollout is the reset frame's pose integrated over every env action, rolling
    or chunked, and it is what the frames being denoised were told (moving it changes the frames)."""
    from worldmodel.command import integrate_commands

    g = torch.Generator().manual_seed(0)
    first, state = torch.randn(B, 1, V, 3, SIZE, SIZE, generator=g), torch.randn(B, 1, 39, generator=g)
    acts = actions(5)
    expected = integrate_commands(state[:, 0, :4], acts.reshape(B, -1, 4), *model.command_parameters())[:, -1]
    outputs = []
    for config in (SamplerConfig(steps=4, window=2, rolling=True, memory=MemoryConfig(k=0)),
                   SamplerConfig(steps=2, window=2, rolling=False, memory=MemoryConfig(k=0))):
        sampler = StreamingSampler(model, config, B)
        sampler.reset(first, state)
        torch.testing.assert_close(sampler.command, state[:, 0, :4])
        outputs.append(sampler.rollout(acts, torch.Generator().manual_seed(2))[1])
        torch.testing.assert_close(sampler.command, expected)
    sampler = StreamingSampler(model, SamplerConfig(steps=4, window=2, rolling=True, memory=MemoryConfig(k=0)), B)
    sampler.reset(first, state)
    sampler.command += 0.5  # told another target, the same actions give other frames
    assert (sampler.rollout(acts, torch.Generator().manual_seed(2))[1] - outputs[0]).abs().mean() > 1e-3


def test_rolling_and_chunked_denoising_differ_but_both_use_every_step(model):
    rolling = start(model, SamplerConfig(steps=4, window=4, rolling=True, memory=MemoryConfig(k=0)))
    chunked = start(model, SamplerConfig(steps=4, window=1, rolling=False, memory=MemoryConfig(k=0)))
    a, _ = run(rolling, 6)
    b, _ = run(chunked, 6)
    assert (a - b).abs().max() > 1e-3
    assert chunked.passes == 6 * 4  # S passes per frame
    assert rolling.passes == 6 + 4 - 1  # one pass per entering frame, plus draining the window


def test_removing_the_sink_changes_the_output(model):
    with_sink = SamplerConfig(steps=2, window=2, sink_frames=1, recent_frames=2, memory=MemoryConfig(k=0))
    no_sink = SamplerConfig(steps=2, window=2, sink_frames=0, recent_frames=2, memory=MemoryConfig(k=0))
    a, _ = run(start(model, with_sink), 8)
    b, _ = run(start(model, no_sink), 8)
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-3  # long after the first frame left the recent window


def test_memory_matters_and_an_empty_memory_adds_nothing(model):
    def config(k):
        return SamplerConfig(steps=2, window=2, recent_frames=3, memory=MemoryConfig(k=k, capacity=8))

    # Short rollout: every earlier frame is a sink or still recent, so nothing can be retrieved.
    short_with, _ = run(start(model, config(2)), 3)
    short_without, _ = run(start(model, config(0)), 3)
    torch.testing.assert_close(short_with, short_without, rtol=0, atol=0)
    # Longer: frames that left the recent window are retrieved by pose and change the prediction.
    long_with, _ = run(start(model, config(2)), 9)
    long_without, _ = run(start(model, config(0)), 9)
    assert (long_with[:, -1] - long_without[:, -1]).abs().max() > 1e-3


def test_1000_frame_rollout_stays_bounded(model, monkeypatch):
    config = SamplerConfig(steps=2, window=2, recent_frames=3, sink_frames=1, memory=MemoryConfig(k=1, capacity=8))
    sampler = start(model, config, batch=1)
    oldest_position = []
    forward = model.forward

    def spy(*args, **kwargs):
        if kwargs.get("context") is not None:
            oldest_position.append(float(kwargs["context"].frame_pos.min()))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    for _ in range(10):
        frames, state = run(sampler, 100)
        assert torch.isfinite(frames).all() and torch.isfinite(state).all()
        assert sampler.cache_frames() <= config.sink_frames + config.recent_frames
        assert int(sampler.memory.size.max()) <= config.memory.capacity
        assert sampler.recent_k[0].shape[2] == config.recent_frames * model.cfg.tokens_per_frame
    assert int(sampler.frames_done[0]) == 1001
    assert min(oldest_position) >= -model.cfg.max_offset  # never a position training did not see


def test_resetting_one_rollout_leaves_it_exactly_like_a_fresh_one(model):
    config = SamplerConfig(steps=2, window=2, recent_frames=3, memory=MemoryConfig(k=1, capacity=8))
    g = torch.Generator().manual_seed(5)
    obs = torch.randn(B, 1, V, 3, SIZE, SIZE, generator=g), torch.randn(B, 1, 39, generator=g)
    fresh = StreamingSampler(model, config, B)
    fresh.reset(*obs)
    expected, _ = run(fresh, 4, seed=9, action_seed=3)

    busy = StreamingSampler(model, config, B)
    busy.reset(torch.randn(B, 1, V, 3, SIZE, SIZE), torch.randn(B, 1, 39))
    run(busy, 6)
    # Rollout 1 went wrong before its reset: NaN in every buffer it owns. The reset must leave none behind
    # (a masked key still multiplies its value by 0, and 0 x NaN is NaN).
    for buffer in (*busy.sink_k, *busy.sink_v, *busy.recent_k, *busy.recent_v, busy.last_state, busy.last_latents,
                   busy.memory.latents, busy.memory.state, busy.memory.pose):
        buffer[1] = float("nan")
    busy.reset(*obs, rollouts=torch.tensor([False, True]))  # rollout 1 restarts, rollout 0 goes on
    assert busy.frames_done.tolist() == [7, 1]
    got, _ = run(busy, 4, seed=9, action_seed=3)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=1e-5)
    assert (got[0] - expected[0]).abs().max() > 1e-3


def test_bad_use_is_refused(model):
    sampler = StreamingSampler(model, SamplerConfig(), 1)
    with pytest.raises(ValueError, match="standard deviations"):  # finite but absurd: refused, not NaN frames
        sampler.rollout(actions(1, batch=1) * 1e12)
    with pytest.raises(RuntimeError, match="reset"):
        sampler.rollout(actions(1, batch=1))
    sampler = start(model, SamplerConfig(), batch=1)
    with pytest.raises(ValueError, match="action_dim=4"):
        sampler.rollout(torch.zeros(1, 2, STRIDE, 7))
    bad = actions(2, batch=1)
    bad[0, 1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sampler.rollout(bad)
    with pytest.raises(ValueError, match="steps"):
        StreamingSampler(model, SamplerConfig(steps=3, window=2), 1)
    with pytest.raises(ValueError, match="max_offset"):
        StreamingSampler(model, SamplerConfig(recent_frames=12, window=4), 1)


def residual_model(condition_on_state: bool, perturb: float, from_first_frame: bool = False, from_memory: bool = False,
                   gate_from_memory: bool = False):
    torch.manual_seed(0)
    cfg = build_config("tiny", dict(hidden_size=64, depth=2, num_heads=2, patch_size=8, predict_residual=True,
                                    condition_on_state=condition_on_state, residual_from_first_frame=from_first_frame,
                                    pixel_anchor_from_memory=from_memory, pixel_gate_from_memory=gate_from_memory,
                                    condition_on_command=False),
                       num_views=V, latent_size=SIZE, image_size=SIZE, frame_stride=STRIDE, camera_keys=["a", "b"],
                       max_offset=12)
    m = make_model(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * perturb)
    return m


@pytest.mark.parametrize("rolling", [True, False])
def test_an_untrained_residual_model_reproduces_the_last_frame_exactly(rolling):
    config = SamplerConfig(steps=4, window=2, rolling=rolling, recent_frames=4, memory=MemoryConfig(k=2, capacity=8))
    sampler = StreamingSampler(residual_model(condition_on_state=True, perturb=0.0), config, B)
    g = torch.Generator().manual_seed(0)
    sampler.reset(torch.rand(B, 1, V, 3, SIZE, SIZE, generator=g) * 2 - 1, torch.randn(B, 1, 39, generator=g))
    first, first_state = sampler.last_latents.clone(), sampler.last_state.clone()
    latents, state = run(sampler, 6)
    assert torch.equal(latents, first[:, None].expand_as(latents))
    assert torch.equal(state, first_state[:, None].expand_as(state))


@pytest.mark.parametrize("rolling", [True, False])
def test_an_untrained_first_frame_residual_model_keeps_the_first_picture_and_the_last_state(rolling):
    """Pictures are anchored on the rollout's first frame, states on the newest: with zero outputs every
    generated picture is the first one, even after the newest frame has changed, and the state stays put."""
    config = SamplerConfig(steps=4, window=2, rolling=rolling, recent_frames=4, memory=MemoryConfig(k=2, capacity=8))
    sampler = StreamingSampler(residual_model(True, perturb=0.0, from_first_frame=True), config, B)
    g = torch.Generator().manual_seed(0)
    observed = torch.rand(B, 2, V, 3, SIZE, SIZE, generator=g) * 2 - 1  # two different observed frames
    states = torch.randn(B, 2, 39, generator=g)
    sampler.reset(observed, states)
    latents, state = run(sampler, 6)
    assert torch.equal(latents, observed[:, :1].expand_as(latents))
    assert torch.equal(state, states[:, 1:].expand_as(state))


@pytest.mark.parametrize("rolling", [True, False])
@pytest.mark.parametrize("from_memory,k,expected", [(True, 2, 1), (True, 0, 0), (False, 2, 0)])
def test_an_untrained_memory_anchored_model_redraws_the_remembered_frame_nearest_the_pose(rolling, from_memory, k,
                                                                                         expected):
    """pixel_anchor_from_memory: pictures take their change from the frame, of the first one and those memory
    retrieves, seen nearest to the newest frame's pose. The robot was at pose 0 (frames 0, 2, 3) and 3 (frames 1, 4);
    it is at 3 now, and for the next two frames frame 1 is the only one at 3 outside the recent window: an untrained
    model redraws it. Without memory (k=0), or anchored on the first frame, it redraws frame 0."""
    config = SamplerConfig(steps=4, window=2, rolling=rolling, recent_frames=2, memory=MemoryConfig(k=k, capacity=16))
    sampler = StreamingSampler(residual_model(True, perturb=0.0, from_first_frame=True, from_memory=from_memory),
                               config, B)
    g = torch.Generator().manual_seed(0)
    observed = torch.rand(B, 5, V, 3, SIZE, SIZE, generator=g) * 2 - 1  # five different pictures
    states = torch.zeros(B, 5, 39)
    states[:, [1, 4], :4] = 3.0  # hand xyz and gripper (the pose) at 3
    sampler.reset(observed, states)
    latents, _ = run(sampler, 2)
    assert torch.equal(latents, observed[:, expected:expected + 1].expand_as(latents))


@pytest.mark.parametrize("rolling", [True, False])
@pytest.mark.parametrize("gate,k,expected", [(1.0, 2, 1), (0.0, 2, 0), (1.0, 0, 0)])
def test_a_memory_gated_model_draws_its_gate_s_share_of_the_remembered_view_nearest_the_pose(rolling, gate, k, expected):
    """pixel_gate_from_memory in the sampler: the view blended in is the one pixel_anchor_from_memory would anchor on
    (the scene of the test above: frame 1). With every gate at 1 an untrained model redraws it; with the gates at zero
    (untrained) or nothing in memory (k=0) it redraws the first frame."""
    config = SamplerConfig(steps=4, window=2, rolling=rolling, recent_frames=2, memory=MemoryConfig(k=k, capacity=16))
    model = residual_model(True, perturb=0.0, from_first_frame=True, gate_from_memory=True)
    with torch.no_grad():
        model.out_view_gate.bias.fill_(gate)
    sampler = StreamingSampler(model, config, B)
    g = torch.Generator().manual_seed(0)
    observed = torch.rand(B, 5, V, 3, SIZE, SIZE, generator=g) * 2 - 1
    states = torch.zeros(B, 5, 39)
    states[:, [1, 4], :4] = 3.0
    sampler.reset(observed, states)
    latents, _ = run(sampler, 2)
    torch.testing.assert_close(latents, observed[:, expected:expected + 1].expand_as(latents), rtol=0, atol=1e-6)


@pytest.mark.parametrize("gripper_weight,expected", [(1.0, 1), (10.0, 0)])
def test_the_memory_anchor_is_chosen_by_the_memory_pose_weights(gripper_weight, expected):
    """The anchor follows the rule the memory retrieves by, its pose_weights included. Now the hand is at x=3 with
    the gripper at 1; frame 0 saw the gripper there but the hand 3 m away (distance 9), frame 1 the hand there but
    the gripper at 0 (distance 1 x the gripper's weight). Frames 2-3 are far from both."""
    memory = MemoryConfig(k=2, capacity=16, pose_weights=[1.0, 1.0, 1.0, gripper_weight])
    config = SamplerConfig(steps=4, window=2, rolling=True, recent_frames=2, memory=memory)
    sampler = StreamingSampler(residual_model(True, perturb=0.0, from_first_frame=True, from_memory=True), config, B)
    g = torch.Generator().manual_seed(0)
    observed = torch.rand(B, 5, V, 3, SIZE, SIZE, generator=g) * 2 - 1
    states = torch.zeros(B, 5, 39)
    states[:, [0, 4], 3] = 1.0
    states[:, [1, 4], 0] = 3.0
    states[:, [2, 3], 0] = -5.0
    sampler.reset(observed, states)
    latents, _ = run(sampler, 1)
    assert torch.equal(latents, observed[:, expected:expected + 1].expand_as(latents))


@pytest.mark.parametrize("rolling", [True, False])
@pytest.mark.parametrize("from_first_frame", [False, True])
def test_residual_rollouts_with_a_cache_equal_recomputing_the_history(rolling, from_first_frame):
    model = residual_model(condition_on_state=True, perturb=0.1, from_first_frame=from_first_frame)
    config = SamplerConfig(steps=4, window=2, rolling=rolling, recent_frames=8, memory=MemoryConfig(k=0))
    cached, cached_state = run(start(model, config), 6)
    naive, naive_state = run(start(model, config, use_cache=False), 6)
    torch.testing.assert_close(cached, naive, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached_state, naive_state, rtol=1e-4, atol=1e-4)
    # The actions still steer a residual model.
    other, _ = run(start(model, config), 6, action_seed=5)
    assert (other - cached).abs().mean() > 1e-3


def test_finished_frames_stay_pictures_and_states_stay_bounded():
    """A drifting model cannot leave the codec's range or run the state off to infinity."""
    model = residual_model(condition_on_state=False, perturb=0.0)
    with torch.no_grad():
        model.out_latent.bias.fill_(0.5)  # every frame adds +0.5 to every pixel
        model.out_state.bias.fill_(3.0)  # and +3 standard deviations to the state
    sampler = start(model, SamplerConfig(steps=2, window=1, rolling=False, recent_frames=4, state_clip_std=6.0))
    latents, state = run(sampler, 8)
    assert latents.max() <= 1.0 and latents[:, -1].min() == 1.0  # saturated white, not 4.0
    assert state.abs().max() <= 6.0 + 1e-5  # (the test model's state statistics are 0 +- 1)


def test_finished_states_stay_inside_the_training_range():
    """With the training set's range stored in the model, a drifting state is held at its edge (the hand at the
    end of the workspace it was recorded in); without it, only the loose std clip applies."""
    model = residual_model(condition_on_state=False, perturb=0.0)
    with torch.no_grad():
        model.out_state.bias.fill_(1.0)  # +1 standard deviation per frame: drifts off
    model.cfg.state_min, model.cfg.state_max = [-0.5] * 39, [0.5 + 0.01 * i for i in range(39)]
    try:
        _, bounded = run(start(model, SamplerConfig(steps=2, window=1, rolling=False, recent_frames=4)), 8)
        _, loose = run(start(model, SamplerConfig(steps=2, window=1, rolling=False, recent_frames=4,
                                                  clip_state_to_training_range=False)), 8)
    finally:
        model.cfg.state_min = model.cfg.state_max = None
    high = torch.tensor([0.5 + 0.01 * i for i in range(39)])
    assert (bounded <= high + 1e-6).all() and (bounded >= -0.5 - 1e-6).all()
    torch.testing.assert_close(bounded[:, -1], high.expand(B, 39))  # pushed up against the edge
    assert loose[:, -1].min() > 1.0


def test_guidance_runs_with_the_cache_ignores_actions_at_scale_zero_and_changes_the_rollout(model):
    # Classifier-free guidance doubles the batch (with and without actions): the cached keys of earlier frames, their
    # padding and the frame positions must be doubled with it. The unconditional half drops the actions of the
    # frames being denoised; the cache keeps the past as it happened (its frames were committed with their actions),
    # so at scale 0 only the first frame, denoised before any committed frame, is the same whatever the actions.
    config = SamplerConfig(steps=2, window=2, recent_frames=8, memory=MemoryConfig(k=0), guidance_scale=0.0)
    unconditional, _ = run(start(model, config), 5, action_seed=1)
    other_actions, _ = run(start(model, config), 5, action_seed=7)
    torch.testing.assert_close(unconditional[:, 0], other_actions[:, 0], rtol=0, atol=1e-6)
    assert (unconditional[:, 1:] - other_actions[:, 1:]).abs().max() > 1e-3

    guided = replace(config, guidance_scale=2.0)
    cached, cached_state = run(start(model, guided), 5)
    naive, naive_state = run(start(model, guided, use_cache=False), 5)
    torch.testing.assert_close(cached, naive, rtol=0, atol=1e-4)
    torch.testing.assert_close(cached_state, naive_state, rtol=0, atol=1e-4)
    plain, _ = run(start(model, replace(config, guidance_scale=1.0)), 5)
    assert (cached - plain).abs().max() > 1e-3 and (cached - unconditional).abs().max() > 1e-3


@pytest.mark.parametrize("rolling", [True, False])
def test_a_frame_filter_replaces_what_is_committed_and_what_comes_after_reads_it(model, rolling):
    """Teacher forcing (eval.picture_swap): the filtered frame is the one returned, cached and read by the next."""
    config = SamplerConfig(steps=2, window=2 if rolling else 1, rolling=rolling, memory=MemoryConfig(k=0))
    replaced = torch.full((B, V, 3, SIZE, SIZE), 0.25)
    plain_first, _ = run(start(model, config), 1)
    plain_both, _ = run(start(model, config), 2)
    filtered = start(model, config)
    filtered.frame_filter = lambda x, s: (replaced, s)
    first, _ = run(filtered, 1)
    torch.testing.assert_close(first[:, 0], replaced, rtol=0, atol=0)
    assert not torch.allclose(plain_first, first)
    # after one filtered frame, the next drawn frame differs from the unfiltered rollout's second frame
    filtered.frame_filter = None
    second, _ = filtered.rollout(actions(2)[:, 1:], torch.Generator().manual_seed(3))
    assert (second[:, 0] - plain_both[:, 1]).abs().mean() > 1e-3


def test_a_memory_filter_changes_what_memory_holds_and_nothing_else(model):
    """eval.memory_probe: the filter is told each committed frame's index, what it returns is what pose memory stores
    (and so what is retrieved later), while the frames returned and cached stay the drawn ones."""
    config = SamplerConfig(steps=2, window=2, recent_frames=3, memory=MemoryConfig(k=2, capacity=8))
    plain, _ = run(start(model, config), 9)
    seen = []

    def constant(latents, state, step):
        seen.append(step.clone())
        return torch.full_like(latents, 0.5)

    filtered = start(model, config)
    filtered.memory_filter = constant
    drawn, _ = run(filtered, 9)
    assert torch.equal(torch.stack(seen)[:, 0], torch.arange(1, 10))  # the frames after the reset frame, in order
    after_reset = filtered.memory.valid & (filtered.memory.step > 0)  # the reset frame came before the filter
    assert bool(after_reset.any()) and bool((filtered.memory.latents[after_reset] == 0.5).all())
    # Nothing differs while memory holds nothing retrievable (frames 1-4: sinks and recent only), then it does.
    torch.testing.assert_close(drawn[:, :4], plain[:, :4], rtol=0, atol=0)
    assert (drawn[:, -1] - plain[:, -1]).abs().max() > 1e-3
    # The same filter that returns what it is given changes nothing at all.
    identity = start(model, config)
    identity.memory_filter = lambda latents, state, step: latents
    torch.testing.assert_close(run(identity, 9)[0], plain, rtol=0, atol=0)

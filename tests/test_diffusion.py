"""Flow matching with per-frame noise: the noise schedule, guidance, and a tiny model that memorises clips."""

import numpy as np
import pytest
import torch

from worldmodel.dataset import ClipDataset, DatasetConfig
from worldmodel.diffusion import DiffusionConfig, FlowMatching, add_noise, guided_prediction, sample_full_sequence
from worldmodel.model import build_config, make_model


def test_add_noise_has_one_level_per_frame():
    x0, noise = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    t = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.2, 0.2]])
    torch.testing.assert_close(add_noise(x0, noise, t)[..., 0], t)


def test_context_frames_are_clean_or_lightly_noised_and_left_out_of_the_loss():
    torch.manual_seed(0)
    fm = FlowMatching(DiffusionConfig(context_prob=0.5, history_noise_prob=0.5, history_noise_max=0.3))
    t, in_loss = fm.sample_noise_levels(4000, 6, "cpu")
    context = ~in_loss
    assert 0.4 < context[:, 0].float().mean() < 0.6  # half the clips start with context
    assert not context[:, -1].any()  # the last frame is always predicted
    assert (t[context] <= 0.3).all()
    assert 0.3 < (t[context] == 0).float().mean() < 0.7  # clean, or lightly noised history
    # Context is always a prefix: once a frame is predicted, every later frame is too.
    assert (in_loss.int().diff(dim=1) >= 0).all()
    # Predicted frames have independent levels spread over (0, 1) (diffusion forcing).
    free = t[in_loss]
    assert free.min() < 0.05 and free.max() > 0.95
    assert abs(np.corrcoef(t[:, -1], t[:, -2])[0, 1]) < 0.1


PLAIN = dict(patch_size=8, predict_residual=False, condition_on_state=False, deterministic_state=False,  # whole frames
             residual_from_first_frame=False, linear_state_dynamics=False, condition_on_command=False)
RESIDUAL = dict(patch_size=8, predict_residual=True, condition_on_state=True,  # change from the newest frame
                residual_from_first_frame=False, linear_state_dynamics=False, condition_on_command=False)


def tiny_model(clips, seed=0, design=PLAIN):
    """The flow-matching machinery is checked on whole-frame prediction (its loss starts far from zero);
    tests of the residual design pass design=RESIDUAL."""
    torch.manual_seed(seed)
    cfg = build_config("tiny", dict(depth=3, **design), num_views=2, latent_size=32,
                       image_size=32, frame_stride=clips.cfg.frame_stride, state_dim=39,
                       camera_keys=clips.camera_keys, **clips.stats)
    return make_model(cfg)


@pytest.fixture(scope="module")
def clips(tiny_dataset_root):
    return ClipDataset(DatasetConfig(root=str(tiny_dataset_root), repo_id="test/tiny",
                                     camera_keys=["corner", "gripperPOV"], image_size=32, frame_stride=3,
                                     clip_frames=4))


def test_tiny_model_overfits_two_clips_and_the_sampler_regenerates_them(clips):
    model = tiny_model(clips)
    fm = FlowMatching(DiffusionConfig(action_dropout=0.0))
    batch = torch.utils.data.default_collate([clips[3], clips[50]])

    def held_fixed_loss():  # same noise levels and noise every time, so values are comparable
        torch.manual_seed(123)
        with torch.no_grad():
            return np.mean([fm.loss(model, batch["images"], model.normalize_state(batch["state"]), batch["actions"])[0].item() for _ in range(8)])

    before = held_fixed_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    # The learning rate decays to zero: at a constant 2e-3 the loss spikes now and then, and whether the last
    # step lands in a spike depends on the machine's numerics (a fixed step count passed here, failed elsewhere).
    # Decayed, three seeds end with the loss ~1000x lower and regeneration errors 0.4-0.6% of the swapped ones.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / 1000)
    for _ in range(1000):
        loss, _ = fm.loss(model, batch["images"], model.normalize_state(batch["state"]), batch["actions"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    after = held_fixed_loss()
    assert after < before / 100, (before, after)

    # The full-sequence reference sampler, from frame 0 and the recorded actions, redraws the clips.
    generator = torch.Generator().manual_seed(0)
    model.eval()
    future, state = sample_full_sequence(model, batch["images"][:, :1], batch["state"][:, :1], batch["actions"],
                                         num_steps=10, generator=generator)
    assert future.shape == batch["images"][:, 1:].shape and state.shape == batch["state"][:, 1:].shape
    err_own = (future - batch["images"][:, 1:]).pow(2).mean()
    err_swapped = (future - batch["images"][[1, 0], 1:]).pow(2).mean()
    assert err_own < err_swapped / 4, (err_own, err_swapped)


@pytest.mark.parametrize("design", [PLAIN, RESIDUAL])
@torch.no_grad()
def test_guidance_scale_one_is_the_plain_model_and_zero_is_unconditional(clips, design):
    model = tiny_model(clips, design=design)
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)
    x = (torch.randn(2, 3, 2, 3, 32, 32), torch.randn(2, 3, 39), torch.rand(2, 3), torch.randn(2, 3, 3, 4))
    anchor = {"latents": torch.randn(2, 3, 2, 3, 32, 32), "state": torch.randn(2, 3, 39)}
    plain = model(*x, anchor=anchor)
    torch.testing.assert_close(guided_prediction(model, *x, None, 1.0, anchor=anchor)["latents"], plain["latents"])
    uncond = model(*x, action_mask=torch.zeros(2, dtype=torch.bool), anchor=anchor)
    torch.testing.assert_close(guided_prediction(model, *x, None, 0.0, anchor=anchor)["latents"], uncond["latents"])
    twice = guided_prediction(model, *x, None, 2.0, anchor=anchor)["latents"]
    torch.testing.assert_close(twice, 2 * plain["latents"] - uncond["latents"], atol=1e-5, rtol=1e-5)


def test_sampler_needs_future_frames(clips):
    model = tiny_model(clips)
    with pytest.raises(ValueError, match="actions"):
        sample_full_sequence(model, torch.zeros(1, 2, 2, 3, 32, 32), torch.zeros(1, 2, 39), torch.zeros(1, 2, 3, 4))


def test_training_with_memory_frames_uses_them(clips, tiny_dataset_root):
    with_memory = ClipDataset(DatasetConfig(**{**clips.cfg.__dict__, "memory_frames": 2}))
    model = tiny_model(with_memory)
    for p in model.parameters():  # random everywhere, as after some training
        p.data.add_(torch.randn_like(p) * 0.05)
    batch = torch.utils.data.default_collate([with_memory[i] for i in (20, 60)])
    assert batch["memory_valid"].all()
    memory = {"latents": batch["memory_images"], "state": model.normalize_state(batch["memory_state"]),
              "frame_pos": batch["memory_offset"].clamp(min=-model.cfg.max_offset), "valid": batch["memory_valid"]}
    fm = FlowMatching(DiffusionConfig(memory_dropout=0.0))

    def loss(mem):
        torch.manual_seed(0)
        return fm.loss(model, batch["images"], model.normalize_state(batch["state"]), batch["actions"],
                       memory=mem)[0]

    with_mem = loss(memory)
    with_mem.backward()
    assert model.patch_embed.weight.grad is not None
    assert abs(with_mem.item() - loss(None).item()) > 1e-4  # the memory frames reach the prediction
    invalid = {**memory, "valid": torch.zeros_like(memory["valid"])}
    torch.testing.assert_close(loss(invalid), loss(None))  # masked memory is no memory


def test_clip_anchors_are_the_last_context_frame_for_future_frames_and_themselves_for_context():
    from worldmodel.diffusion import clip_anchors

    latents = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1, 1, 1, 1).expand(2, 4, 1, 3, 2, 2)
    state = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)
    is_future = torch.tensor([[False, True, True, True], [False, False, False, True]])
    anchor = clip_anchors(latents, state, is_future)
    assert anchor["state"][..., 0].tolist() == [[0, 0, 0, 0], [4, 5, 6, 6]]
    assert anchor["latents"][:, :, 0, 0, 0, 0].tolist() == [[0, 0, 0, 0], [4, 5, 6, 6]]


def test_residual_models_always_train_with_a_clean_anchor():
    torch.manual_seed(0)
    fm = FlowMatching(DiffusionConfig(context_prob=0.5))
    t, in_loss = fm.sample_noise_levels(2000, 6, "cpu", always_context=True)
    assert (~in_loss[:, 0]).all() and in_loss[:, -1].all()
    cfg = build_config("tiny", dict(hidden_size=32, depth=1, num_heads=2, patch_size=8, predict_residual=True,
                                    residual_from_first_frame=False, linear_state_dynamics=False,
                                    condition_on_command=False),
                       num_views=1, latent_size=8, image_size=8, frame_stride=2, camera_keys=["a"])
    with pytest.raises(ValueError, match="clip_frames"):
        fm.loss(make_model(cfg), torch.zeros(2, 1, 1, 3, 8, 8), torch.zeros(2, 1, 39), torch.zeros(2, 1, 2, 4))
    # A clip that does not change costs an untrained residual model nothing: it already copies the anchor.
    loss, _ = fm.loss(make_model(cfg), torch.ones(2, 5, 1, 3, 8, 8) * 0.3, torch.ones(2, 5, 39) * 0.5,
                      torch.randn(2, 5, 2, 4))
    assert loss.item() == 0.0


def test_first_frame_residual_models_anchor_pictures_on_the_first_frame_and_need_it():
    cfg = build_config("tiny", dict(hidden_size=32, depth=1, num_heads=2, patch_size=8, predict_residual=True,
                                    condition_on_state=True, residual_from_first_frame=True, condition_on_command=False),
                       num_views=1, latent_size=8, image_size=8, frame_stride=2, camera_keys=["a"])
    model, fm = make_model(cfg), FlowMatching(DiffusionConfig())
    latents, state, actions = torch.rand(2, 5, 1, 3, 8, 8), torch.randn(2, 5, 39), torch.randn(2, 5, 2, 4)
    with pytest.raises(ValueError, match="dataset.memory_frames"):
        fm.loss(model, latents, state, actions)
    # The episode's first frame (memory slot 0) is what an untrained model predicts, whatever the clip shows:
    # the loss is zero exactly when every predicted frame equals it.
    first = torch.rand(2, 1, 1, 3, 8, 8)
    memory = {"latents": first, "state": torch.zeros(2, 1, 39), "frame_pos": -torch.ones(2, 1),
              "valid": torch.zeros(2, 1, dtype=torch.bool)}  # dropped from attention, still the anchor
    still = first.expand(2, 5, 1, 3, 8, 8)
    zero, _ = fm.loss(model, still, state[:, :1].expand(2, 5, 39), actions, memory=memory)
    moved, _ = fm.loss(model, latents, state[:, :1].expand(2, 5, 39), actions, memory=memory)
    assert zero.item() == 0.0 and moved.item() > 0.01
    # The reference sampler anchors every future picture on the first context frame, the state on the last.
    with torch.no_grad():
        x, s = sample_full_sequence(model, latents[:, :2], state[:, :2], actions[:, :4], num_steps=2)
    torch.testing.assert_close(x, latents[:, :1].expand_as(x), rtol=0, atol=0)
    torch.testing.assert_close(s, state[:, 1:2].expand_as(s), rtol=0, atol=1e-5)


MEMORY_DESIGN = dict(hidden_size=32, depth=1, num_heads=2, patch_size=8, predict_residual=True, condition_on_state=True,
                     residual_from_first_frame=True, condition_on_command=False)
MEMORY_SIZES = dict(num_views=1, latent_size=8, image_size=8, frame_stride=2, camera_keys=["a"])


def three_places(model):
    """Memory of 3 frames (slot 0: the first frame, at pose 0; slot 1 at pose 3; slot 2 at -5) and a 5-frame clip at
    pose 2.5, nearest to slot 1: pictures (2, 3, 1, 3, 8, 8), memory, normalised state, actions."""
    pictures = torch.rand(2, 3, 1, 3, 8, 8)
    memory_state = torch.zeros(2, 3, 39)
    memory_state[:, 1, :4], memory_state[:, 2, :4] = 3.0, -5.0
    memory = {"latents": pictures, "state": model.normalize_state(memory_state), "frame_pos": -torch.ones(2, 3),
              "valid": torch.tensor([[False, True, True]] * 2)}
    state = torch.zeros(2, 5, 39)
    state[..., :4] = 2.5
    return pictures, memory, model.normalize_state(state), torch.randn(2, 5, 2, 4)


def loss_showing(fm, model, pictures, shown, state, actions, memory):
    """The loss of a clip whose every frame shows memory slot `shown`."""
    return fm.loss(model, pictures[:, shown:shown + 1].expand(2, 5, 1, 3, 8, 8), state, actions, memory=memory,
                   generator=torch.Generator().manual_seed(0))[0].item()


def test_memory_anchored_models_add_the_change_to_the_memory_frame_nearest_the_anchor_pose():
    """pixel_anchor_from_memory in training: the future frames' pixel anchor is the memory frame (slot 0, the first
    frame, always a candidate) seen nearest to the pose of the frame they follow; a slot dropped or invalid is
    never chosen. An untrained model's loss is zero exactly when the future frames show that anchor."""
    with pytest.raises(ValueError, match="pixel_anchor_from_memory"):
        make_model(build_config("tiny", {**MEMORY_DESIGN, "residual_from_first_frame": False,
                                         "pixel_anchor_from_memory": True}, **MEMORY_SIZES))
    model = make_model(build_config("tiny", {**MEMORY_DESIGN, "pixel_anchor_from_memory": True}, **MEMORY_SIZES))
    fm = FlowMatching(DiffusionConfig(memory_dropout=0.0))
    pictures, memory, state, actions = three_places(model)

    def loss(shown, memory):
        return loss_showing(fm, model, pictures, shown, state, actions, memory)

    assert loss(1, memory) == 0.0 and loss(0, memory) > 0.01 and loss(2, memory) > 0.01
    without_slot_1 = {**memory, "valid": torch.tensor([[False, False, True]] * 2)}
    assert loss(0, without_slot_1) == 0.0  # the first frame (pose 0) is nearer to 2.5 than slot 2 (pose -5)


@pytest.mark.parametrize("gate,dropped,shown", [(0.0, False, 0), (1.0, False, 1), (1.0, True, 0)])
def test_a_memory_gated_model_takes_its_gate_s_share_of_the_view_nearest_in_pose(gate, dropped, shown):
    """pixel_gate_from_memory in training: each predicted pixel is the first frame + gate x (the memory frame nearest
    in pose to the frame the clip follows - the first frame) + the network's change. Untrained, the gate is zero: the
    first-frame design, whatever memory holds. With a gate of 1 it redraws the nearest view (slot 1), and the first
    frame where the clip's memory is dropped. The loss is zero exactly when the future frames show that picture."""
    with pytest.raises(ValueError, match="pixel_gate_from_memory"):
        make_model(build_config("tiny", {**MEMORY_DESIGN, "pixel_gate_from_memory": True,
                                         "pixel_anchor_from_memory": True}, **MEMORY_SIZES))
    model = make_model(build_config("tiny", {**MEMORY_DESIGN, "pixel_gate_from_memory": True}, **MEMORY_SIZES))
    with torch.no_grad():
        model.out_view_gate.bias.fill_(gate)
    fm = FlowMatching(DiffusionConfig(memory_dropout=1.0 if dropped else 0.0))
    pictures, memory, state, actions = three_places(model)
    losses = [loss_showing(fm, model, pictures, i, state, actions, memory) for i in range(3)]
    assert losses[shown] == 0.0 and all(loss > 0.01 for i, loss in enumerate(losses) if i != shown)


REGRESSED = dict(hidden_size=32, depth=1, num_heads=2, patch_size=8, predict_residual=True,
                 residual_from_first_frame=False, linear_state_dynamics=False, deterministic_state=True,
                 condition_on_command=False)


def regressed_state_model():
    cfg = build_config("tiny", REGRESSED, num_views=1, latent_size=8, image_size=8, frame_stride=2, camera_keys=["a"])
    return make_model(cfg)


@pytest.mark.parametrize("median", [True, False])
def test_a_deterministic_state_is_trained_by_its_plain_error_whatever_the_noise_level(median):
    """The state loss of deterministic_state does not depend on the frame's noise level: an untrained model
    predicts the anchor's state, and its state loss is exactly the absolute (median_state, the default) or
    squared change from the anchor."""
    model, fm = regressed_state_model(), FlowMatching(DiffusionConfig(median_state=median))
    latents, actions = torch.zeros(3, 2, 1, 3, 8, 8), torch.randn(3, 2, 2, 4)
    state = torch.randn(3, 2, 39)  # frame 0 is the (always clean) context, frame 1 is predicted
    change = state[:, 1] - state[:, 0]
    expected = change.abs().mean() if median else change.pow(2).mean()
    for seed in range(3):  # other noise levels, same state loss
        _, parts = fm.loss(model, latents, state, actions, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(parts["state_loss"], expected)


def test_median_state_keeps_a_usually_still_object_still():
    """An object that stays put in 7 of 10 identical-looking clips and moves by 1 in 3: trained by its squared
    error the model moves it by ~0.3 every frame (an open-loop rollout sums that into a drift); trained by the
    absolute error (median_state) it predicts no move at all."""
    moved = {}
    for median in (True, False):
        torch.manual_seed(0)
        model, fm = regressed_state_model(), FlowMatching(DiffusionConfig(median_state=median))
        latents, actions = torch.zeros(10, 2, 1, 3, 8, 8), torch.zeros(10, 2, 2, 4)
        state = torch.zeros(10, 2, 39)
        state[:3, 1, 4] = 1.0  # the object moved in 3 clips out of 10
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(300):
            loss, _ = fm.loss(model, latents, state, actions, generator=torch.Generator().manual_seed(step))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            out = model(latents[:1], state[:1], torch.tensor([[0.0, 0.5]]), actions[:1],
                        anchor={"latents": latents[:1], "state": state[:1, :1].expand(1, 2, 39)})
        moved[median] = float(out["state"][0, 1, 4])
    assert abs(moved[True]) < 0.05, moved
    assert 0.2 < moved[False] < 0.4, moved


def test_balanced_state_weights_follow_how_much_each_dimension_changes():
    """balance_state_dims: a dimension that changes half as much per frame weighs 4x as much; dimensions that never
    change keep weight 1; an untrained residual model's state loss is the weighted squared change."""
    from worldmodel.diffusion import balanced_state_weight

    weight = balanced_state_weight(torch.tensor([0.2, 0.1, 0.0]), torch.tensor([1.0, 1.0, 1.0]))
    torch.testing.assert_close(weight, torch.tensor([0.4, 1.6, 1.0]))
    model = regressed_state_model()
    state_weight = torch.rand(39) * 3
    latents, actions, state = torch.zeros(3, 2, 1, 3, 8, 8), torch.randn(3, 2, 2, 4), torch.randn(3, 2, 39)
    _, parts = FlowMatching(DiffusionConfig(), state_weight).loss(model, latents, state, actions)
    torch.testing.assert_close(parts["state_loss"], ((state[:, 1] - state[:, 0]).abs() * state_weight).mean())


def test_self_forcing_shows_the_context_the_models_own_pictures_and_keeps_the_rest_real():
    cfg = build_config("tiny", dict(hidden_size=32, depth=1, num_heads=2, patch_size=8, predict_residual=True,
                                    condition_on_state=True, residual_from_first_frame=True, condition_on_command=False),
                       num_views=1, latent_size=8, image_size=8, frame_stride=2, camera_keys=["a"])
    torch.manual_seed(0)
    model = make_model(cfg)
    for p in model.parameters():  # random everywhere, as after some training: its pictures are not the clip's
        p.data.add_(torch.randn_like(p) * 0.05)
    fm = FlowMatching(DiffusionConfig(self_forcing_prob=1.0, self_forcing_steps=2))
    latents, state, actions = torch.rand(2, 5, 1, 3, 8, 8) * 2 - 1, torch.randn(2, 5, 39), torch.randn(2, 5, 2, 4)
    memory = {"latents": torch.rand(2, 1, 1, 3, 8, 8), "state": torch.zeros(2, 1, 39), "frame_pos": -torch.ones(2, 1),
              "valid": torch.ones(2, 1, dtype=torch.bool)}
    is_future = torch.tensor([[False, False, False, True, True], [False, True, True, True, True]])
    shown = fm.own_context_pictures(model, latents, state, actions, None, is_future, torch.Generator().manual_seed(1),
                                    memory, None)
    with torch.no_grad():
        own, _ = sample_full_sequence(model, latents[:, :1], model.denormalize_state(state[:, :1]), actions, 2,
                                      generator=torch.Generator().manual_seed(1), memory=memory,
                                      first_latents=memory["latents"][:, 0])
    # The first frame and every frame in the loss stay real; the other context frames are what the model draws.
    torch.testing.assert_close(shown[:, 0], latents[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(shown[is_future], latents[is_future], rtol=0, atol=0)
    torch.testing.assert_close(shown[0, 1:3], own[0, :2].clamp(-1, 1), rtol=0, atol=0)
    assert (shown[0, 1:3] - latents[0, 1:3]).abs().mean() > 0.1
    # The loss draws them in that fraction of steps only.
    calls = []
    for prob in (0.0, 1.0):
        fm = FlowMatching(DiffusionConfig(self_forcing_prob=prob, self_forcing_steps=2))
        original = fm.own_context_pictures
        fm.own_context_pictures = lambda *args: calls.append(prob) or original(*args)
        fm.loss(model, latents, state, actions, memory=memory, generator=torch.Generator().manual_seed(0))
    assert calls == [1.0]

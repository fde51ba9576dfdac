"""Flow matching with one noise level per frame (diffusion forcing), and the reference sampler.

Parametrisation: rectified flow. A frame at noise level t in [0, 1] is x_t = (1 - t) x_0 + t eps, and
the sampler integrates the velocity v = eps - x_0 from t = 1 to t = 0. We pick it over EDM because the
noise level *is* the interpolation weight (no sigma-dependent preconditioning to carry per frame) and
few-step Euler sampling, which rolling denoising relies on, is well behaved along its straight paths.

The network predicts the clean frame x_0 (latents and state) and the loss is taken on the velocity
it implies, v = (x_t - x_0) / t (JiT, "Back to Basics", 2025). With pixel patches a token carries
more numbers (8x8x3 = 192) than a small model's width: predicting eps or v would have to squeeze
noise through that bottleneck, predicting the clean, low-dimensional image does not. It also makes
"the frame once denoised" simply the network's output, which the streaming sampler caches.

Training (`FlowMatching.loss`) draws an independent t for every frame. For half of the clips a prefix
of random length is instead *context*: clean, or with probability `history_noise_prob` lightly
noised up to `history_noise_max` (Ctrl-World's history augmentation, so the model tolerates its own
imperfect history), and left out of the loss. Actions are dropped for a whole clip with probability
`action_dropout` so that classifier-free guidance on actions is possible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worldmodel.command import integrate_commands
from worldmodel.model import KVContext, VideoDiT


@dataclass
class DiffusionConfig:
    # Per-frame t ~ sigmoid(N(mean, std)) (logit-normal, as SD3): more weight on mid noise levels.
    logit_mean: float = 0.0
    logit_std: float = 1.0
    context_prob: float = 0.5  # fraction of clips trained as "context prefix + noisy future"
    history_noise_prob: float = 0.5  # of those, fraction whose context is lightly noised
    history_noise_max: float = 0.3
    action_dropout: float = 0.1
    state_loss_weight: float = 1.0
    # v = (x_t - x0) / t is clamped at t >= min_t so that nearly clean frames do not dominate the loss.
    min_t: float = 0.2
    memory_dropout: float = 0.2  # clips trained without their memory frames, so an empty memory works too
    # Residual models: anchor the future frames on the last context frame as the network sees it (with its
    # history noise) instead of its clean value, so the predicted change also has to correct a corrupted
    # anchor. Off by default: measured worse (eval/results/ablation_cpu.md), since the anchor's noise enters
    # the target change and nothing in the clip explains it; pictures anchored on the first frame
    # (residual_from_first_frame) do not compound errors in the first place.
    noisy_anchor: bool = False
    # Weight each state dimension's error by the inverse variance of its change over one world-model frame in the
    # training set (normalised to a mean weight of 1): a residual state is trained on changes, and with the state's
    # own statistics the puck's quaternion, which tumbles, changes 10-30x more (in its units) than the puck's
    # position, so the loss barely sees where the puck is (eval/results/state_drift_cpu_tiny.md).
    balance_state_dims: bool = False
    # A regressed state (model.deterministic_state) learns its conditional median (absolute error) instead of its
    # mean (squared error). An object moves only when something pushes it; where the network cannot yet tell
    # whether contact happens, the mean is a small move every frame, and an open-loop rollout sums those moves
    # into a drift across the table. The median of "usually still" is exactly still.
    median_state: bool = True
    # Self forcing of the context pictures (as Self Forcing and Rolling Forcing train on the model's own history): in
    # this fraction of training steps the pictures of every context frame after the clip's first are replaced by the
    # model's own, drawn from that first frame with the clip's actions (`self_forcing_steps` Euler steps, no
    # gradient); the states and every frame in the loss stay real. A rollout reads the model's own pictures: with
    # the shipped push tiny, real gripper-camera pictures alone remove the imagined hand's stall above the puck
    # (eval/results/ablation_cpu_contact.md), so the model must learn to read its own.
    self_forcing_prob: float = 0.0
    self_forcing_steps: int = 4


def noise_levels(steps: int, device=None) -> torch.Tensor:
    """The sampler's schedule: `steps` Euler updates from t = 1 (noise) to t = 0 (clean), evenly spaced."""
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


def euler_step(x: torch.Tensor, x0: torch.Tensor, t_now, t_next) -> torch.Tensor:
    """One Euler update of x at level t_now to t_next along the velocity implied by the prediction x0; at
    t_next = 0 it lands exactly on x0. t_now, t_next: scalars, or (B, F) per frame (broadcast over x)."""
    keep = t_next / t_now
    if torch.is_tensor(keep) and keep.ndim:
        keep = per_frame(keep, x)
    return keep * x + (1 - keep) * x0


def per_frame(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, T) -> broadcastable over the trailing dims of `like`."""
    return t.reshape(*t.shape, *([1] * (like.ndim - t.ndim)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise, with one t per frame."""
    t = per_frame(t, x0)
    return (1 - t) * x0 + t * noise


def velocity(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, min_t: float) -> torch.Tensor:
    """v = (x_t - x0) / t: the flow-matching velocity implied by a clean-frame prediction x0."""
    return (x_t - x0) / per_frame(t, x_t).clamp(min=min_t)


class GeneratorState:
    """A torch.Generator that accelerate can checkpoint (register_for_checkpointing needs state_dict)."""

    def __init__(self, seed: int, device):
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])


class FlowMatching:
    def __init__(self, config: DiffusionConfig | None = None, state_weight: torch.Tensor | None = None):
        self.config = config or DiffusionConfig()
        self.state_weight = state_weight  # (S,) per-dimension weights of the state error (balance_state_dims)

    def sample_noise_levels(self, B: int, T: int, device, generator: torch.Generator | None = None,
                            always_context: bool = False):
        """Returns t (B, T) and the loss mask (B, T): False for context frames. `always_context`: every clip
        has at least one context frame (a residual model needs a clean anchor to add its change to)."""
        cfg = self.config

        def rand(*shape):
            return torch.rand(shape, device=device, generator=generator)

        t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(B, T, device=device, generator=generator))
        in_loss = torch.ones(B, T, dtype=torch.bool, device=device)
        if T > 1:
            with_context = rand(B) < (1.0 if always_context else cfg.context_prob)
            n_context = torch.randint(1, T, (B,), device=device, generator=generator)
            is_context = with_context[:, None] & (torch.arange(T, device=device)[None] < n_context[:, None])
            noisy_history = rand(B) < cfg.history_noise_prob
            history_t = rand(B, T) * cfg.history_noise_max * noisy_history[:, None]
            t = torch.where(is_context, history_t, t)
            in_loss = ~is_context
        return t, in_loss

    def loss(self, model: VideoDiT, latents: torch.Tensor, state0: torch.Tensor, actions: torch.Tensor,
             actions_is_pad: torch.Tensor | None = None,
             generator: torch.Generator | None = None, memory: dict | None = None,
             command: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """latents (B, T, V, C, H, W) clean codec latents; state0 (B, T, S) clean *normalised* state;
        actions (B, T, stride, A) raw. `model` may be wrapped (DDP): only its forward is called.
        memory: optional clean memory frames for `VideoDiT.encode_memory` (latents, normalised state, frame_pos,
        valid); whole clips lose theirs with probability `memory_dropout`. command: (B, T, P) raw commanded pose of
        every frame (ClipDataset.attach_commands), for a model with condition_on_command.
        All randomness comes from `generator` (the trainer checkpoints its state, for exact resumes)."""
        B, T = latents.shape[:2]
        device = latents.device
        net = getattr(model, "module", model)  # model may be wrapped (DDP): forward on model, helpers on net
        mc = net.cfg
        uses_anchor = mc.uses_anchor
        if uses_anchor and T < 2:
            raise ValueError("dataset.clip_frames: a model that predicts residuals or conditions on state needs clips "
                             f"of at least 2 frames (a clean anchor and a frame to predict), got {T}")
        t, in_loss = self.sample_noise_levels(B, T, device, generator, always_context=uses_anchor)
        noise_latents = torch.randn(latents.shape, device=device, generator=generator)
        noise_state = torch.randn(state0.shape, device=device, generator=generator)
        action_mask = torch.rand(B, device=device, generator=generator) >= self.config.action_dropout
        noisy_latents, noisy_state = add_noise(latents, noise_latents, t), add_noise(state0, noise_state, t)
        if memory is not None:
            keep = torch.rand(B, device=device, generator=generator) >= self.config.memory_dropout
            memory = {**memory, "valid": memory["valid"] & keep[:, None]}
        own_pictures = self.config.self_forcing_prob > 0 and bool(
            torch.rand(1, device=device, generator=generator) < self.config.self_forcing_prob)
        if own_pictures:
            latents = self.own_context_pictures(net, latents, state0, actions,
                                                actions_is_pad, in_loss, generator, memory, command)
            noisy_latents = add_noise(latents, noise_latents, t)
        anchor_source = (noisy_latents, noisy_state) if self.config.noisy_anchor else (latents, state0)
        anchor = clip_anchors(*anchor_source, in_loss, actions, actions_is_pad) if uses_anchor else None
        if mc.residual_from_first_frame:  # the clip's future frames follow its last context frame's pose
            own, query = anchor["latents"], anchor["state"][:, -1]
            anchor["latents"] = first_frame_anchors(own, pixel_anchor_latents(net, memory, query), in_loss)
            if mc.pixel_gate_from_memory:
                anchor["view"] = first_frame_anchors(own, memory_view_latents(net, memory, query), in_loss)
        if mc.condition_on_command:
            anchor["command"] = command_anchors(net, command, anchor["state"], in_loss)
        out = model(noisy_latents, noisy_state, t, actions, actions_is_pad, action_mask, memory=memory, anchor=anchor)
        min_t = self.config.min_t
        weight = in_loss.float()
        latent_err = (velocity(noisy_latents, out["latents"].float(), t, min_t)
                      - velocity(noisy_latents, latents, t, min_t)).pow(2).mean(dim=(2, 3, 4, 5))  # (B, T)
        if mc.deterministic_state:  # regressed: the plain error of the state, whatever the frame's noise level
            state_error = out["state"].float() - state0  # (B, T, S)
            per_dim_err = state_error.abs() if self.config.median_state else state_error.pow(2)
        else:
            per_dim_err = (velocity(noisy_state, out["state"].float(), t, min_t)
                           - velocity(noisy_state, state0, t, min_t)).pow(2)  # (B, T, S)
        if self.state_weight is not None:
            per_dim_err = per_dim_err * self.state_weight.to(per_dim_err.device)
        state_err = per_dim_err.mean(dim=2)  # (B, T)
        denom = weight.sum().clamp(min=1)
        latent_loss = (latent_err * weight).sum() / denom
        state_loss = (state_err * weight).sum() / denom
        loss = latent_loss + self.config.state_loss_weight * state_loss
        return loss, {"loss": loss.detach(), "latent_loss": latent_loss.detach(), "state_loss": state_loss.detach()}

    def own_context_pictures(self, model: VideoDiT, latents, state0, actions, actions_is_pad, is_future, generator,
                             memory, command) -> torch.Tensor:
        """latents (B, T, V, C, H, W) with the pictures of the context frames after the first replaced by the
        model's own: frames 1.. drawn together from frame 0 (real pictures and state) with the clip's actions, as
        the reference sampler does, and shown as a rollout commits them (pixels clamped to the codec's range)."""
        mc = model.cfg
        from_first = mc.residual_from_first_frame
        own, _ = sample_full_sequence(
            model, latents[:, :1], model.denormalize_state(state0[:, :1]), actions, self.config.self_forcing_steps,
            actions_is_pad=actions_is_pad, generator=generator, command=command, memory=memory,
            first_latents=pixel_anchor_latents(model, memory, state0[:, 0]) if from_first else None,
            view_latents=memory_view_latents(model, memory, state0[:, 0]) if mc.pixel_gate_from_memory else None)
        if mc.codec.get("type") == "pixel":
            own = own.clamp(-1.0, 1.0)
        own = torch.cat([latents[:, :1], own.to(latents.dtype)], dim=1)  # frame 0 stays real
        return torch.where(per_frame(~is_future, latents), own, latents)


def balanced_state_weight(change_std: torch.Tensor, state_std: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """(S,) weights for balance_state_dims: 1 / (each dimension's change over one frame, in units of its own std)^2,
    scaled to a mean of 1 over the dimensions that change (by `floor` std or more); the others (constants, padding)
    keep weight 1: their error is only the network's noise."""
    change = change_std / state_std
    changes = change >= floor
    weight = 1.0 / change.clamp(min=floor).pow(2)
    weight = weight / weight[changes].mean() if bool(changes.any()) else torch.ones_like(weight)
    return torch.where(changes, weight, torch.ones_like(weight))


def clip_anchors(latents: torch.Tensor, state: torch.Tensor, is_future: torch.Tensor,
                 actions: torch.Tensor | None = None, actions_is_pad: torch.Tensor | None = None) -> dict:
    """Every frame's anchor in a clip whose context is a prefix: a context frame is its own anchor, a future
    frame's is the last context frame. latents (B, T, ...), state (B, T, S), is_future (B, T): the values the
    anchors are taken from (clean, or as the network sees them with `noisy_anchor`). With actions
    (B, T, stride, A) raw (and their padding flags), also "action_sum" (B, T, A): the env actions since the anchor."""
    B, T = is_future.shape
    n_context = (~is_future).sum(dim=1, keepdim=True)  # (B, 1), >= 1
    index = torch.minimum(torch.arange(T, device=latents.device)[None], n_context - 1)  # (B, T)

    def gather(x):
        return x.gather(1, index.reshape(B, T, *([1] * (x.ndim - 2))).expand_as(x))

    anchor = {"latents": gather(latents), "state": gather(state)}
    if actions is not None:
        if actions_is_pad is not None:  # steps before the episode's start took no action
            actions = actions.masked_fill(actions_is_pad[..., None], 0.0)
        taken = actions.sum(dim=2).cumsum(dim=1)  # (B, T, A) every action up to and including frame t's chunk
        anchor["action_sum"] = taken - gather(taken)
    return anchor


def command_anchors(model: VideoDiT, command: torch.Tensor | None, anchor_state: torch.Tensor,
                    is_future: torch.Tensor) -> torch.Tensor:
    """anchor["command"] (B, T, P) normalised: a frame being predicted gets its commanded pose (B, T, P) raw; a
    clean frame is its own anchor and gets its own pose (an offset of zero), as committed frames in the samplers."""
    if command is None:
        raise ValueError("command: a model with condition_on_command needs every clip's commanded pose (B, T, P); "
                         "call ClipDataset.attach_commands(*model.command_parameters()) before training")
    own_pose = anchor_state[..., list(model.cfg.pose_indices)]
    return torch.where(per_frame(is_future, own_pose), model.normalize_pose(command.to(own_pose.dtype)), own_pose)


def rollout_commands(model: VideoDiT, start_pose: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Commanded pose (B, F, P) raw of F frames that follow a frame whose command was `start_pose` (B, P) raw,
    given their action chunks (B, F, stride, A) raw: the command after each frame's last env step."""
    B, F, stride, A = actions.shape
    steps = integrate_commands(start_pose, actions.reshape(B, F * stride, A), *model.command_parameters())
    return steps[:, stride - 1::stride]


def first_frame_latents(memory: dict | None) -> torch.Tensor:
    """The episode's first frame, (B, V, C, H, W): memory slot 0 (see DatasetConfig.memory_frames). It is the
    anchor whether or not this clip's memory is dropped from attention."""
    if memory is None:
        raise ValueError("dataset.memory_frames: a model with residual_from_first_frame needs at least 1 memory "
                         "frame (slot 0 is the episode's first frame, the anchor of its pixels), got 0")
    return memory["latents"][:, 0]


def pixel_anchor_latents(model: VideoDiT, memory: dict | None, query_state: torch.Tensor) -> torch.Tensor:
    """The pixels' anchor (B, V, C, H, W) of a clip's future frames (residual_from_first_frame): the episode's first
    frame, or with pixel_anchor_from_memory the memory frame nearest in pose to `query_state` (B, S) normalised, the
    frame they follow. Slot 0, the first frame, is always a candidate; the other slots where they are valid (a clip
    whose memory is dropped keeps the first frame, as a rollout with nothing in memory does)."""
    if not model.cfg.pixel_anchor_from_memory:
        return first_frame_latents(memory)
    return memory_view_latents(model, memory, query_state)


def memory_view_latents(model: VideoDiT, memory: dict | None, query_state: torch.Tensor) -> torch.Tensor:
    """(B, V, C, H, W) the memory frame nearest in pose to `query_state` (B, S) normalised, of slot 0 (the first
    frame, always a candidate) and the other slots where they are valid: the pixel anchor of pixel_anchor_from_memory,
    the view pixel_gate_from_memory blends in."""
    first_frame_latents(memory)  # names a missing memory
    valid = memory["valid"].clone()
    valid[:, 0] = True
    pose = list(model.cfg.pose_indices)
    poses = model.denormalize_state(memory["state"])[..., pose]  # (B, M, P)
    query = model.denormalize_state(query_state)[..., pose]  # (B, P)
    return nearest_pose_latents(memory["latents"], (poses - query[:, None]).pow(2).sum(-1), valid)


def nearest_pose_latents(latents: torch.Tensor, distance: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """latents (B, M, V, C, H, W) of M candidate frames, their pose distance (B, M) to the query pose, valid (B, M)
    with at least one True per row -> (B, V, C, H, W): the valid candidate nearest in pose. The one rule training
    (distance with every component weighted 1, as the dataset's memory retrieval) and the sampler (its PoseMemory's
    distance, the rule it retrieves by) share."""
    distance = distance.masked_fill(~valid, float("inf"))  # (B, M)
    return latents[torch.arange(latents.shape[0], device=latents.device), distance.argmin(dim=1)]


def first_frame_anchors(anchor_latents: torch.Tensor, first: torch.Tensor, is_future: torch.Tensor) -> torch.Tensor:
    """Frames being predicted are anchored on `first` (B, V, C, H, W): the first frame, or the memory frame
    pixel_anchor_latents chose; clean frames stay their own."""
    return torch.where(per_frame(is_future, anchor_latents), first[:, None].to(anchor_latents.dtype), anchor_latents)


def twice(value):
    """A per-rollout model input (tensor, dict of tensors, KV cache, or None) for a batch stacked twice."""
    if isinstance(value, torch.Tensor):
        return torch.cat([value, value])
    if isinstance(value, dict):
        return {k: twice(v) for k, v in value.items()}
    if isinstance(value, KVContext):
        return value.twice()
    return value


def guided_prediction(model, latents, state, t, actions, actions_is_pad, guidance_scale: float, **kwargs):
    """The model's clean-frame prediction, with classifier-free guidance on actions when guidance_scale != 1
    (guiding x0 is guiding the velocity: v is affine in x0 for fixed x_t and t)."""
    if guidance_scale == 1.0:
        return model(latents, state, t, actions, actions_is_pad, **kwargs)
    B = latents.shape[0]
    kwargs = {name: twice(value) for name, value in kwargs.items()}  # every per-rollout input, for both halves
    both = model(torch.cat([latents, latents]), torch.cat([state, state]), torch.cat([t, t]),
                 torch.cat([actions, actions]),
                 None if actions_is_pad is None else torch.cat([actions_is_pad, actions_is_pad]),
                 action_mask=torch.arange(2 * B, device=latents.device) < B, **kwargs)
    return {k: both[k][B:] + guidance_scale * (both[k][:B] - both[k][B:]) for k in ("latents", "state")}


@torch.no_grad()
def sample_full_sequence(
    model: VideoDiT,
    context_latents: torch.Tensor,  # (B, K, V, C, H, W) clean observed frames
    context_state: torch.Tensor,  # (B, K, S) raw state of the observed frames
    actions: torch.Tensor,  # (B, K + F, frame_stride, A) action chunks of every frame (context included)
    num_steps: int = 10,
    guidance_scale: float = 1.0,
    actions_is_pad: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    command: torch.Tensor | None = None,  # (B, K + F, P) raw commanded pose; None: integrated from the last context frame
    first_latents: torch.Tensor | None = None,  # (B, V, C, H, W) the pixels' anchor (residual_from_first_frame); None: context frame 0
    view_latents: torch.Tensor | None = None,  # (B, V, C, H, W) the memory view (pixel_gate_from_memory); None: the anchor
    memory: dict | None = None,  # clean memory frames for VideoDiT.encode_memory, as in training
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference sampler: all F future frames are denoised together from t=1 to 0 with Euler steps,
    recomputing the whole sequence every step (no cache). The baseline any faster sampler must match.
    Returns latents (B, F, V, C, H, W) and raw state (B, F, S) of the future frames."""
    B, K = context_latents.shape[:2]
    F_ = actions.shape[1] - K
    if F_ < 1:
        raise ValueError(f"actions: need one chunk per context frame and per future frame; got {actions.shape[1]} "
                         f"chunks for {K} context frames")
    device = context_latents.device
    x = torch.randn((B, F_, *context_latents.shape[2:]), generator=generator, device=device)
    s = torch.randn((B, F_, model.cfg.state_dim), generator=generator, device=device)
    ctx_state = model.normalize_state(context_state)
    is_future = torch.arange(K + F_, device=device)[None].expand(B, -1) >= K
    # Anchors (for residual / state-conditioned models): the last context frame for every future frame.
    anchor = clip_anchors(torch.cat([context_latents, x], 1), torch.cat([ctx_state, s], 1), is_future, actions,
                          actions_is_pad)
    if model.cfg.residual_from_first_frame:
        first = context_latents[:, 0] if first_latents is None else first_latents
        own = anchor["latents"]
        anchor["latents"] = first_frame_anchors(own, first, is_future)
        if model.cfg.pixel_gate_from_memory:  # no view given: the anchor itself, nothing to blend in
            anchor["view"] = first_frame_anchors(own, first if view_latents is None else view_latents, is_future)
    if model.cfg.condition_on_command:
        if command is None:  # a rollout starts where it was commanded to be
            start = context_state[:, -1, list(model.cfg.pose_indices)]
            command = torch.cat([context_state[..., list(model.cfg.pose_indices)],
                                 rollout_commands(model, start, actions[:, K:])], dim=1)
        anchor["command"] = command_anchors(model, command, anchor["state"], is_future)
    levels = noise_levels(num_steps, device)
    for i in range(num_steps):
        t_future = levels[i].expand(B, F_)
        t_all = torch.cat([torch.zeros(B, K, device=device), t_future], dim=1)
        out = guided_prediction(model, torch.cat([context_latents, x], 1), torch.cat([ctx_state, s], 1), t_all,
                                actions, actions_is_pad, guidance_scale, anchor=anchor, memory=memory)
        x = euler_step(x, out["latents"][:, K:], levels[i], levels[i + 1])
        s = euler_step(s, out["state"][:, K:], levels[i], levels[i + 1])
    return x, model.denormalize_state(s)

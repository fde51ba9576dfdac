"""Streaming imagination: long rollouts with a bounded KV cache, attention sinks and pose memory.

A plain class (not an nn.Module) that drives a trained `VideoDiT` frame after frame for B independent
rollouts at once. Three ways to denoise new frames:

  rolling (default, Rolling Forcing): a window of W frames at staggered noise levels is denoised
      jointly, one forward pass per step; each pass lowers every frame's level, the front frame leaves
      the window clean, a fresh noise frame with its own action chunk enters at the back. A frame gets
      S = `steps` updates in all; with S = p * W a new frame enters every p passes. Needs the actions of
      the W frames in the window, so it is for open-loop action sequences (`rollout`) and action-chunk
      policies.
  chunk (Self Forcing style): `window` frames denoised together with S steps, then the next chunk;
      chunk = 1 is the closed-loop mode a policy steps through (`WorldModel.step`).
  naive: like rolling, but without any cache: every pass re-encodes the whole clean history from
      scratch (the cost a cache removes; the baseline the cache is checked against).

The context every pass attends to is bounded, whatever the rollout length:
  sink frames    the first `sink_frames` frames of the rollout, kept for the whole rollout;
  recent frames  the last `recent_frames` clean frames;
  memory frames  `memory.k` frames retrieved by pose from a `PoseMemory` of `memory.capacity` frames.
Keys/values of a frame are computed once, in one clean pass when it leaves the window, and reused by
every later pass (memory frames are encoded alone, as in training). Time positions are relative to the
first frame being denoised and clamped at the model's `max_offset` frames into the past, so a rollout of any length
never uses positions beyond those seen in training and the cost per frame stays flat.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from worldmodel.diffusion import euler_step, guided_prediction, nearest_pose_latents, noise_levels, rollout_commands
from worldmodel.memory import MemoryConfig, PoseMemory
from worldmodel.model import KVContext, VideoDiT


@dataclass
class SamplerConfig:
    steps: int = 4  # S: denoising updates each frame receives
    window: int = 4  # W: frames in the rolling window (S must be a multiple of W), or the chunk size
    rolling: bool = True  # False: chunk-autoregressive
    sink_frames: int = 1
    recent_frames: int = 4
    guidance_scale: float = 1.0  # classifier-free guidance on actions (1 = none)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    # A finished frame's state is kept within this many standard deviations of the training data's (None:
    # unbounded), so a drifting open-loop rollout cannot run off to absurd states.
    state_clip_std: float | None = 6.0
    # ... and inside the range every state dimension had in the training set, when the model carries it
    # (VideoDiTConfig.state_min/max): the hand stays in the workspace it was recorded in, the object on the
    # table. Dead reckoning needs the same bound to stay near the real hand (eval/fidelity.py), and a state
    # outside anything seen in training would condition the next frame on a situation the model never learned.
    clip_state_to_training_range: bool = True
    # (A, P): pose change per env action, for the memory query "where will the arm be". MetaWorld moves
    # the hand by action[:3] / 100 per step. None: the model's own (fitted on its training set, stored in
    # its config), else query with the current pose.
    action_to_pose: list[list[float]] | None = None


class StreamingSampler:
    def __init__(self, model: VideoDiT, config: SamplerConfig, batch_size: int, device=None,
                 use_cache: bool = True):
        cfg = config
        if cfg.rolling and cfg.steps % cfg.window:
            raise ValueError(f"steps: rolling needs steps to be a multiple of window ({cfg.window}), got {cfg.steps}")
        if cfg.recent_frames + cfg.window > model.cfg.max_offset + 1:
            raise ValueError(f"recent_frames: {cfg.recent_frames} recent + {cfg.window} window frames span more than "
                             f"the model's max_offset {model.cfg.max_offset}; the recent frames would share positions")
        self.model, self.config, self.use_cache = model, cfg, use_cache
        self.device = device or next(model.parameters()).device
        self.B = batch_size
        mc = model.cfg
        self.state_low = self.state_high = None  # raw state bounds of finished frames (B-broadcast)
        if cfg.clip_state_to_training_range and mc.state_min is not None and mc.state_max is not None:
            self.state_low = torch.tensor(mc.state_min, dtype=torch.float32, device=self.device)
            self.state_high = torch.tensor(mc.state_max, dtype=torch.float32, device=self.device)
        self.L = mc.tokens_per_frame
        self.latent_shape = (mc.num_views, mc.latent_channels, mc.latent_size, mc.latent_size)
        self.pose_indices = list(mc.pose_indices)
        action_to_pose = cfg.action_to_pose if cfg.action_to_pose is not None else mc.action_to_pose
        self.action_to_pose = (torch.tensor(action_to_pose, device=self.device, dtype=torch.float32)
                               if action_to_pose is not None else None)
        heads = mc.num_heads
        head_dim = mc.hidden_size // heads
        B, dev = batch_size, self.device

        def kv_buffer(frames):  # per layer: keys and values (B, heads, frames * L, head_dim)
            return [torch.zeros(B, heads, frames * self.L, head_dim, device=dev) for _ in range(mc.depth)]

        # Sinks and recent frames: fixed-size buffers + per-frame step index and validity.
        self.sink_k, self.sink_v = kv_buffer(cfg.sink_frames), kv_buffer(cfg.sink_frames)
        self.sink_step = torch.zeros(B, cfg.sink_frames, dtype=torch.long, device=dev)
        self.sink_valid = torch.zeros(B, cfg.sink_frames, dtype=torch.bool, device=dev)
        self.recent_k, self.recent_v = kv_buffer(cfg.recent_frames), kv_buffer(cfg.recent_frames)
        self.recent_step = torch.zeros(B, cfg.recent_frames, dtype=torch.long, device=dev)
        self.recent_valid = torch.zeros(B, cfg.recent_frames, dtype=torch.bool, device=dev)
        self.memory = PoseMemory(cfg.memory, B, self.latent_shape, mc.state_dim, len(self.pose_indices), dev)
        self.frames_done = torch.zeros(B, dtype=torch.long, device=dev)  # clean frames so far per rollout
        self.last_state = torch.zeros(B, mc.state_dim, device=dev)  # raw state of the newest clean frame
        self.last_latents = torch.zeros(B, *self.latent_shape, device=dev)  # and its latents (the anchor)
        self.first_latents = torch.zeros(B, *self.latent_shape, device=dev)  # the rollout's first frame
        self.first_pose = torch.zeros(B, len(self.pose_indices), device=dev)  # and the pose it was seen at
        # The commanded pose after the newest clean frame (worldmodel/command.py), raw: it starts at the pose of the
        # rollout's last observed frame and follows the actions.
        self.command = torch.zeros(B, len(self.pose_indices), device=dev)
        self.history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # naive mode
        self.passes = 0  # forward passes over new frames (for benchmarks)
        # Called on every finished frame before it is committed: (latents (B, V, C, H, W), raw state (B, S)) -> the
        # same, changed. None: frames are committed as drawn. For teacher forcing: eval.picture_swap puts the real
        # pictures of some views in place of the drawn ones, to see which part of its own output a rollout stalls on.
        self.frame_filter = None
        # Called on every committed frame before the pose memory stores it: (latents (B, V, C, H, W), raw state (B, S),
        # frame index (B,)) -> the latents to store. None: memory stores what was committed. For eval.memory_probe:
        # a memory of the real pictures (what a perfect memory would give) or of another episode's (is it read?).
        self.memory_filter = None

    # -- bookkeeping -------------------------------------------------------------------------------
    def cache_frames(self) -> int:
        """Frames of keys/values held for attention (sinks + recent): never more than the bound."""
        return int(self.sink_valid.sum(1).max() + self.recent_valid.sum(1).max())

    def reset(self, latents: torch.Tensor, state: torch.Tensor, rollouts: torch.Tensor | None = None) -> None:
        """Start rollouts from K observed clean frames: latents (B, K, V, C, H, W), raw state (B, K, S).
        `rollouts` (B,) bool restarts only those rollouts (the others keep going)."""
        B = self.B
        rows = torch.ones(B, dtype=torch.bool, device=self.device) if rollouts is None else rollouts.to(self.device)
        if not self.use_cache and not bool(rows.all()):
            raise ValueError("rollouts: the naive (no cache) sampler only resets all rollouts together")
        self.sink_valid[rows] = False
        self.recent_valid[rows] = False
        # Zero every buffer of these rollouts, not only their validity: attention gives a masked key weight
        # 0, and 0 x NaN is NaN, so anything a broken rollout left in its cache would survive the reset.
        for buffer in (*self.sink_k, *self.sink_v, *self.recent_k, *self.recent_v):
            buffer[rows] = 0.0
        for buffer in (self.last_state, self.last_latents, self.first_latents, self.first_pose, self.command):
            buffer[rows] = 0.0
        self.memory.clear(rows)
        self.frames_done[rows] = 0
        if not self.use_cache:
            self.history = []
        K = latents.shape[1]
        no_actions = torch.zeros(B, 1, self.model.cfg.frame_stride, self.model.cfg.action_dim, device=self.device)
        for j in range(K):  # observed frames enter exactly like generated ones: one clean pass each
            self._commit(latents[:, j], state[:, j], no_actions[:, 0], active=rows)
        # A rollout starts where it was commanded to be (at rest: the controller's target is the pose itself).
        self.command = torch.where(rows[:, None], state[:, -1, self.pose_indices].to(self.command), self.command)

    # -- context -------------------------------------------------------------------------------------
    def _relative(self, steps: torch.Tensor, first_new: torch.Tensor) -> torch.Tensor:
        """Frame index -> position relative to the first frame being denoised, clamped into the past."""
        return (steps - first_new[:, None]).clamp(min=-self.model.cfg.max_offset).float()

    def _tokens(self, per_frame: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, F * L)
        return per_frame.repeat_interleave(self.L, dim=1)

    def _query_pose(self, actions: torch.Tensor) -> torch.Tensor:
        """Where the arm will be for the next frame: last pose + pose change implied by its actions."""
        pose = self.last_state[:, self.pose_indices]
        if self.action_to_pose is not None:
            pose = pose + actions.sum(dim=1) @ self.action_to_pose
        return pose

    def retrieve(self, next_actions: torch.Tensor) -> dict | None:
        """The memory frames for the next frames (PoseMemory.retrieve's dict), outside the recent window and the
        sinks, queried with where the arm will be after `next_actions` (B, stride, A); None without memory."""
        k = self.config.memory.k
        if k == 0 or not self.use_cache:
            return None
        newest_recent = (self.frames_done - self.config.recent_frames - 1)
        found = self.memory.retrieve(self._query_pose(next_actions), k, exclude_after=newest_recent)
        found["valid"] &= found["step"] >= self.config.sink_frames  # sinks are already in the context
        return found

    def context(self, first_new: torch.Tensor, found: dict | None) -> KVContext | None:
        """Everything the frames from index `first_new` (B,) on attend to, with the memory frames `found`
        (`retrieve`'s, or None)."""
        if not self.use_cache:
            return self._naive_context(first_new)
        parts = [
            KVContext(self.sink_k, self.sink_v, self._tokens(self._relative(self.sink_step, first_new)),
                      self._tokens(self.sink_valid)),
        ]
        if found is not None and bool(found["valid"].any()):
            parts.append(self.model.encode_memory(found["latents"], self.model.normalize_state(found["state"]),
                                                  self._relative(found["step"], first_new), found["valid"]))
        parts.append(KVContext(self.recent_k, self.recent_v,
                               self._tokens(self._relative(self.recent_step, first_new)),
                               self._tokens(self.recent_valid)))
        return KVContext.concat(parts)

    @torch.no_grad()
    def _naive_context(self, first_new: torch.Tensor) -> KVContext | None:
        """No cache: one causal pass over the entire clean history, every time."""
        if not self.history:
            return None
        latents, state, actions, steps = (torch.stack(x, dim=1) for x in zip(*self.history))
        n = latents.shape[1]
        out = self.model(latents, self.model.normalize_state(state), torch.zeros(self.B, n, device=self.device),
                         actions, frame_pos=(steps - first_new[:, None]).float(), return_kv=True)
        return out["kv"]

    # -- committing a clean frame --------------------------------------------------------------------
    @torch.no_grad()
    def _commit(self, latents, state, actions, active=None):
        """A frame is final: one clean pass computes its keys/values, which join the recent cache (or the
        sinks, for the first frames) and the pose memory. latents (B, V, C, H, W), raw state (B, S)."""
        B, cfg = self.B, self.config
        active = torch.ones(B, dtype=torch.bool, device=self.device) if active is None else active
        step = self.frames_done.clone()
        if not self.use_cache:
            self.history.append((latents, state, actions, step))
        else:
            ctx = self.context(step, self.retrieve(actions))
            out = self.model(latents[:, None], self.model.normalize_state(state)[:, None],
                             torch.zeros(B, 1, device=self.device), actions[:, None], context=ctx,
                             frame_pos=torch.zeros(B, 1, device=self.device), return_kv=True)
            is_sink = active & (step < cfg.sink_frames)
            to_recent = active & ~is_sink
            L = self.L
            sink_slot = step.clamp(max=cfg.sink_frames - 1)
            recent_slot = (step - cfg.sink_frames) % cfg.recent_frames
            for layer, (k, v) in enumerate(zip(out["kv"].keys, out["kv"].values)):
                for buffer_k, buffer_v, slot, rows in ((self.sink_k, self.sink_v, sink_slot, is_sink),
                                                       (self.recent_k, self.recent_v, recent_slot, to_recent)):
                    if not bool(rows.any()):
                        continue
                    idx = rows.nonzero().squeeze(1)
                    token = slot[idx, None] * L + torch.arange(L, device=self.device)  # (n, L)
                    gather = token[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
                    buffer_k[layer][idx] = buffer_k[layer][idx].scatter(2, gather, k[idx])
                    buffer_v[layer][idx] = buffer_v[layer][idx].scatter(2, gather, v[idx])
            rows = torch.arange(B, device=self.device)
            self.sink_step[rows[is_sink], sink_slot[is_sink]] = step[is_sink]
            self.sink_valid[rows[is_sink], sink_slot[is_sink]] = True
            self.recent_step[rows[to_recent], recent_slot[to_recent]] = step[to_recent]
            self.recent_valid[rows[to_recent], recent_slot[to_recent]] = True
        if cfg.memory.k > 0 and self.use_cache:
            stored = latents if self.memory_filter is None else self.memory_filter(latents, state, step)
            self.memory.store(stored, state, state[:, self.pose_indices], step, active=active)
        if self.model.cfg.condition_on_command:
            moved = rollout_commands(self.model, self.command, actions[:, None])[:, 0]
            self.command = torch.where(active[:, None], moved, self.command)
        self.last_state = torch.where(active[:, None], state, self.last_state)
        self.last_latents = torch.where(active.reshape(B, 1, 1, 1, 1), latents, self.last_latents)
        is_first = (active & (step == 0)).reshape(B, 1, 1, 1, 1)
        self.first_latents = torch.where(is_first, latents, self.first_latents)
        self.first_pose = torch.where(is_first.reshape(B, 1), state[:, self.pose_indices], self.first_pose)
        self.frames_done = self.frames_done + active.long()

    # -- denoising -----------------------------------------------------------------------------------
    def _final(self, x, s):
        """A denoised frame becomes final. Pixel latents are pictures: they are clamped to the range the
        codec shows ([-1, 1]), so a rollout continues from exactly the picture the user sees (a residual
        model adds its change to it); the state is clipped to `state_clip_std` and to the training range.
        -> latents, raw state."""
        if self.model.cfg.codec.get("type") == "pixel":
            x = x.clamp(-1.0, 1.0)
        if self.config.state_clip_std is not None:
            s = s.clamp(-self.config.state_clip_std, self.config.state_clip_std)
        s = self.model.denormalize_state(s)
        if self.state_low is not None:
            s = s.clamp(min=self.state_low, max=self.state_high)
        if self.frame_filter is not None:
            x, s = self.frame_filter(x, s)
        return x, s

    def nearest_view(self, found: dict | None) -> torch.Tensor:
        """(B, V, C, H, W) of the first frame and the memory frames `found`, the one seen nearest in pose to the newest
        clean frame (as in training); the first frame where memory found nothing."""
        if found is None:
            return self.first_latents
        first_valid = torch.ones(self.B, 1, dtype=torch.bool, device=self.device)
        poses = torch.cat([self.first_pose[:, None], found["pose"]], 1)  # (B, 1 + k, P)
        return nearest_pose_latents(torch.cat([self.first_latents[:, None], found["latents"]], 1),
                                    self.memory.distance(self.last_state[:, self.pose_indices], poses),
                                    torch.cat([first_valid, found["valid"]], 1))

    def pixel_anchor(self, found: dict | None) -> torch.Tensor:
        """(B, V, C, H, W) the latents the frames being denoised add their pictures' change to: the newest clean
        frame; the first frame for residual_from_first_frame; with pixel_anchor_from_memory, the nearest view."""
        mc = self.model.cfg
        if not mc.residual_from_first_frame:
            return self.last_latents
        return self.nearest_view(found) if mc.pixel_anchor_from_memory else self.first_latents

    def pictures_base(self, found: dict | None) -> dict:
        """What the frames being denoised draw their pictures from, given the memory frames `found` (retrieve's, or
        None): "latents" (B, V, C, H, W) the pixel anchor and, with pixel_gate_from_memory, "view" (B, V, C, H, W) the
        remembered view each pixel may take a share of."""
        base = {"latents": self.pixel_anchor(found)}
        if self.model.cfg.pixel_gate_from_memory:
            base["view"] = self.nearest_view(found)
        return base

    def _predict(self, x, s, t, actions, context, pictures_base):
        """Clean-frame prediction for frames at per-frame levels t (B, F), positions 0..F-1, attending to `context`,
        their pictures drawn from `pictures_base` (pictures_base's dict)."""
        B, F = t.shape
        pos = torch.arange(F, device=self.device).expand(B, F).float()
        # Every frame being denoised is anchored on the newest clean frame (its pixels on the pixel anchor), as
        # future frames are in training.
        anchor = {name: frame[:, None].expand(B, F, *self.latent_shape) for name, frame in pictures_base.items()}
        anchor.update({"state": self.model.normalize_state(self.last_state)[:, None].expand(B, F, -1),
                       # the frames being denoised follow the anchor one after another: actions since it accumulate
                       "action_sum": actions.sum(dim=2).cumsum(dim=1)})
        if self.model.cfg.condition_on_command:  # and so do their commands
            anchor["command"] = self.model.normalize_pose(rollout_commands(self.model, self.command, actions))
        return guided_prediction(self.model, x, s, t, actions, None, self.config.guidance_scale,
                                 frame_pos=pos, context=context, anchor=anchor)

    @torch.no_grad()
    def rollout(self, actions: torch.Tensor, generator: torch.Generator | None = None):
        """Generate one frame per action chunk: actions (B, F, frame_stride, A) raw. Rolling or chunked
        per the config. Returns latents (B, F, V, C, H, W) and raw state (B, F, S)."""
        self.model.check_actions(actions, self.B, actions.shape[1])
        if int(self.frames_done.min()) == 0:
            raise RuntimeError("reset: call reset(latents, state) with at least one observed frame first")
        if self.config.rolling:
            return self._rolling(actions, generator)
        return self._chunked(actions, generator)

    def _noise(self, n, generator):
        x = torch.randn(self.B, n, *self.latent_shape, device=self.device, generator=generator)
        s = torch.randn(self.B, n, self.model.cfg.state_dim, device=self.device, generator=generator)
        return x, s

    def _chunked(self, actions, generator):
        cfg, F = self.config, actions.shape[1]
        levels = noise_levels(cfg.steps, self.device)
        frames, states = [], []
        for start in range(0, F, cfg.window):
            a = actions[:, start:start + cfg.window]
            n = a.shape[1]
            x, s = self._noise(n, generator)
            found = self.retrieve(a[:, 0])
            context, pictures_base = self.context(self.frames_done, found), self.pictures_base(found)
            for i in range(cfg.steps):
                pred = self._predict(x, s, levels[i].expand(self.B, n), a, context, pictures_base)
                self.passes += 1
                x = euler_step(x, pred["latents"], levels[i], levels[i + 1])
                s = euler_step(s, pred["state"], levels[i], levels[i + 1])
            for j in range(n):
                latents, state = self._final(x[:, j], s[:, j])
                self._commit(latents, state, a[:, j])
                frames.append(latents)
                states.append(state)
        return torch.stack(frames, 1), torch.stack(states, 1)

    def _rolling(self, actions, generator):
        cfg, F = self.config, actions.shape[1]
        S, p = cfg.steps, cfg.steps // cfg.window
        levels = noise_levels(S, self.device)
        window = []  # dicts: x, s, level index, action index; front (oldest) first
        frames, states = [], []
        next_frame = 0
        while next_frame < F or window:
            # A new frame enters every p passes (or as soon as the window is empty).
            if next_frame < F and (not window or window[-1]["level"] >= p):
                x, s = self._noise(1, generator)
                window.append({"x": x[:, 0], "s": s[:, 0], "level": 0, "index": next_frame})
                next_frame += 1
            a = torch.stack([actions[:, f["index"]] for f in window], dim=1)
            t = torch.stack([levels[f["level"]].expand(self.B) for f in window], dim=1)
            found = self.retrieve(a[:, 0])
            pred = self._predict(torch.stack([f["x"] for f in window], 1), torch.stack([f["s"] for f in window], 1),
                                 t, a, self.context(self.frames_done, found), self.pictures_base(found))
            self.passes += 1
            for j, f in enumerate(window):
                now, next_ = levels[f["level"]], levels[f["level"] + 1]
                f["x"] = euler_step(f["x"], pred["latents"][:, j], now, next_)
                f["s"] = euler_step(f["s"], pred["state"][:, j], now, next_)
                f["level"] += 1
            if window[0]["level"] == S:  # the front frame is clean: it leaves the window
                done = window.pop(0)
                latents, state = self._final(done["x"], done["s"])
                self._commit(latents, state, actions[:, done["index"]])
                frames.append(latents)
                states.append(state)
        return torch.stack(frames, 1), torch.stack(states, 1)

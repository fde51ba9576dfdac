"""VideoDiT: a multi-view, frame-level action-conditioned video diffusion transformer.

A clip is T frames; a frame is V views of a latent grid (from a codec) plus the robot state. Each
view is cut into N patches, so a frame is L = V * N + 1 tokens (the +1 is the state token), and one
attention covers all views of all visible frames: multi-view prediction is joint, not per view.

Per frame, one conditioning vector c_t = embed(noise level t) + embed(action chunk t) drives
adaLN-Zero modulation of that frame's tokens only (diffusion forcing: clean context, lightly noised
history and noisy future frames share one forward pass; frame-level actions: a frame sees its own
action chunk, and earlier ones only through attention to earlier frames).

Attention is block-causal across frames (frame t sees every token of frames <= t) and time enters
only through rotary embeddings of each frame's position, applied at attention time. Keys are
returned and cached *before* the rotation, so a sampler can keep a bounded cache and re-index the
positions of cached frames (sinks, recent frames, retrieved memories) relative to the current frame.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange


@dataclass
class VideoDiTConfig:
    # -- network --
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    patch_size: int = 8
    rope_theta: float = 10000.0
    # Predict change, not frames: every frame's latents and state are its anchor (the newest clean frame
    # at or before it) plus the network's output. Zero-initialised outputs make an untrained model copy
    # the anchor exactly, so training goes into motion instead of relearning the static scene (Delta-IRIS).
    predict_residual: bool = False
    # Each frame's adaLN conditioning also embeds its anchor's state (where the hand and the object are),
    # so the effect of an action can be read off directly (Ctrl-World conditions on absolute poses).
    condition_on_state: bool = False
    # Residual pixels are taken from the rollout's first frame (the attention sink; in training the episode's
    # first frame) instead of the newest one; the state keeps the newest frame as its anchor. A generated
    # picture is then never the base of the next one, so pixel errors cannot compound over a long open-loop
    # rollout, and an untrained model equals copy-the-first-frame. The first frame's patches are also added
    # to every denoised frame's tokens, so each token sees what it is changing.
    residual_from_first_frame: bool = False
    # ... or, with memory frames, from the one (the first frame included) nearest in pose to the newest clean frame:
    # a place seen before is redrawn from the view of it, not rebuilt from the first frame (copying the real frame a
    # 512-slot pose memory retrieves scores 2 dB above the first-frame design on revisits,
    # eval/results/memory_probe_cpu_tiny_capacity512_uncapped.md). Measured, it lowers revisit PSNR 2.8 dB (own memory)
    # and 0.7 dB (real frames) below no memory: trained clips' anchors are near their own view
    # (eval/results/memory_probe_cpu_tiny_memory_anchor_capacity512.md), so it is off by default. The first frame
    # stays the anchor where memory holds nothing (and in clips whose memory is dropped). Needs
    # residual_from_first_frame.
    pixel_anchor_from_memory: bool = False
    # ... or keep the first frame as the anchor and let the pictures take, pixel by pixel, a learned share of the memory
    # view: picture = first frame + g * (view - first frame) + the network's change, where the view is the frame (the
    # first one included) nearest in pose to the newest clean frame, as above, and g one number per pixel that the
    # network outputs. The view's difference from the first frame also enters each token. Both layers start at zero,
    # so an untrained gate is the first-frame design (and a model trained without it fine-tunes from where it is),
    # and copying a remembered place is one gate per pixel instead of something attention must rebuild from the
    # view's tokens (a tiny network never learned to: eval/results/ablation_cpu_memory_revisit.md). Needs
    # residual_from_first_frame; not with pixel_anchor_from_memory (the anchor would already be the view).
    pixel_gate_from_memory: bool = False
    # The state change also gets a linear path (zero at init) from the env actions summed since the anchor:
    # position control moves the hand nearly linearly in the actions, which a transformer reads only slowly
    # through adaLN; the network adds the rest (contacts, the object). Needs predict_residual.
    linear_state_dynamics: bool = False
    # The state is regressed, not sampled: a frame being denoised sees its anchor's clean state in the state
    # token (never a noisy one) and the loss is the plain squared error of its predicted state, so every frame's
    # state is the model's conditional mean given the anchor, the actions and the picture being drawn. A sampled
    # state adds fresh noise at every frame and an open-loop rollout sums it (eval/results/ablation_cpu.md: the
    # hand wandered tens of cm in 5 s with 4 sampling steps, far less with 1). Needs predict_residual.
    deterministic_state: bool = False
    # Every frame being predicted is told the commanded pose (worldmodel/command.py): where the controller is driving
    # the robot, integrated from the rollout's first frame with `command_gain`, clipped to the pose range at each
    # step. It enters the frame's adaLN conditioning and, through a linear path (zero at init), its state change,
    # as its offset from the anchor's pose: the model learns how the hand lags the target and what it pushes,
    # instead of summing its own per-step estimates of the motion over a long open-loop rollout (where
    # eval/results/state_drift_cpu_tiny.md showed them compounding). The linear path starts as the identity on the
    # pose: an untrained model puts the robot at its commanded pose (dead reckoning). Needs predict_residual.
    condition_on_command: bool = False
    # The state token reads the pictures (its own frame's and the earlier ones'). Turn it off where the dataset's
    # state is complete (MetaWorld's holds the hand, the gripper and the objects' poses): the state is then
    # predicted from states, actions and commands alone, and a rollout's drawn pictures, blurrier than real ones,
    # cannot steer it (eval/results/ablation_cpu_contact.md: the imagined push stalls on the model's own
    # gripper-camera pictures). The pictures still read the state, so they are drawn where the state says.
    state_reads_pictures: bool = True
    # On CUDA, block-causal attention runs through FlexAttention (compiled; skips fully masked blocks)
    # instead of SDPA with a dense boolean mask.
    flex_attention_on_cuda: bool = True
    # -- what it models (filled in from the dataset and codec at training time) --
    num_views: int = 3
    latent_channels: int = 3
    latent_size: int = 64
    action_dim: int = 4
    frame_stride: int = 4
    state_dim: int = 39
    camera_pose_dim: int = 12  # flattened 3x4 world-to-camera extrinsics, optional at call time
    # Cached/retrieved frames sit at most this many frames in the past (positions are clamped here in
    # training and in the streaming sampler alike, so no rollout uses positions training never saw).
    max_offset: int = 15
    # -- everything else a checkpoint needs to be used on its own --
    preset: str = "tiny"
    camera_keys: list[str] = field(default_factory=lambda: ["corner", "corner2", "gripperPOV"])
    image_size: int = 64
    fps: int = 80
    pose_indices: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    # (A, P) pose change per env action, fitted on the training set (ClipDataset.action_to_pose): the
    # sampler's memory query "where will the arm be" uses it unless SamplerConfig overrides it.
    action_to_pose: list[list[float]] | None = None
    # (A, P) gain of the commanded pose (ClipDataset.command_gain); None: action_to_pose, else no motion.
    command_gain: list[list[float]] | None = None
    action_names: list[str] | None = None  # the dataset's names of the action dimensions (teleop's key map)
    action_mean: list[float] | None = None
    action_std: list[float] | None = None
    state_mean: list[float] | None = None
    state_std: list[float] | None = None
    # The state's range in the training set (per dimension): the sampler keeps predicted states inside it.
    state_min: list[float] | None = None
    state_max: list[float] | None = None
    codec: dict = field(default_factory=lambda: {"type": "pixel", "image_size": 64})

    @property
    def tokens_per_view(self) -> int:
        return (self.latent_size // self.patch_size) ** 2

    @property
    def tokens_per_frame(self) -> int:
        return self.num_views * self.tokens_per_view + 1

    @property
    def uses_anchor(self) -> bool:
        """Frames being denoised need their anchor (the newest clean frame before them)."""
        return self.predict_residual or self.condition_on_state


# Presets: plain functions returning network sizes and the design; data fields come from the dataset.
# Every preset predicts change: pictures from the rollout's first frame, the state from the newest frame (with a
# linear path from the actions since it), and reads the anchor's state (eval/results/ablation_cpu.md).
# With pixel patches a token must be about as wide as the patch it carries (16x16x3 = 768 numbers for
# `tiny`): with x-prediction a narrower token still learns, but slower.
DESIGN = dict(predict_residual=True, condition_on_state=True, residual_from_first_frame=True, linear_state_dynamics=True,
              deterministic_state=True, condition_on_command=True)


def tiny() -> dict:  # the CPU design (3 views x 16 patches of 16x16 px + a state token per frame), tests, laptops
    return dict(preset="tiny", hidden_size=192, depth=4, num_heads=4, patch_size=16, **DESIGN)


def small() -> dict:  # one GPU: the same design, wider and deeper, 8x8 patches (193 tokens per frame)
    # 8 blocks (22 M parameters, 44 MB in fp16) keep the shipped small + tiny + judge under 60 MB.
    return dict(preset="small", hidden_size=384, depth=8, num_heads=6, patch_size=8, **DESIGN)


def base() -> dict:  # latent codec (e.g. 192x320 -> 24x40x4 with AutoencoderKL), DROID scale, multi-GPU
    return dict(preset="base", hidden_size=768, depth=16, num_heads=12, patch_size=2, **DESIGN)


PRESETS = {"tiny": tiny, "small": small, "base": base}


@dataclass
class KVContext:
    """Keys/values of earlier, clean frames that the current frames attend to (all of them visible).

    keys, values: one (B, heads, Lc, head_dim) tensor per layer; keys are stored *before* rotary
    embedding so positions can be re-indexed. frame_pos: (B, Lc) time position of every cached token.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    frame_pos: torch.Tensor
    valid: torch.Tensor | None = None  # (B, Lc) False for padding (rollouts whose cache is not full yet)

    @property
    def length(self) -> int:
        return self.frame_pos.shape[1]

    def twice(self) -> "KVContext":
        """The same context for a batch stacked twice (classifier-free guidance's two halves)."""
        return KVContext([torch.cat([k, k]) for k in self.keys], [torch.cat([v, v]) for v in self.values],
                         torch.cat([self.frame_pos, self.frame_pos]),
                         None if self.valid is None else torch.cat([self.valid, self.valid]))

    @staticmethod
    def concat(contexts: list["KVContext"]) -> "KVContext":
        contexts = [c for c in contexts if c is not None and c.length > 0]
        if not contexts:
            return None
        any_padding = any(c.valid is not None for c in contexts)
        return KVContext(
            keys=[torch.cat(layer, dim=2) for layer in zip(*(c.keys for c in contexts))],
            values=[torch.cat(layer, dim=2) for layer in zip(*(c.values for c in contexts))],
            frame_pos=torch.cat([c.frame_pos for c in contexts], dim=1),
            valid=torch.cat([c.valid if c.valid is not None else torch.ones_like(c.frame_pos, dtype=torch.bool)
                             for c in contexts], dim=1) if any_padding else None,
        )


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    args = values.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding of a grid x grid patch layout: (grid * grid, dim)."""
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sinusoidal_embedding(ys.flatten(), dim // 2, 100.0),
                      sinusoidal_embedding(xs.flatten(), dim // 2, 100.0)], dim=-1)


def rotary(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding of time. x: (B, H, L, Dh); pos: (B, L) frame positions (may be fractional)."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = pos.float()[:, None, :, None] * inv_freq  # (B, 1, L, Dh/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


_compiled_flex_attention = None


def attend(q, k, v, mask):
    """SDPA with a dense boolean mask, or FlexAttention with a BlockMask (compiled on CUDA)."""
    global _compiled_flex_attention
    if isinstance(mask, BlockMask):
        if q.is_cuda:
            if _compiled_flex_attention is None:
                _compiled_flex_attention = torch.compile(flex_attention, dynamic=False)
            return _compiled_flex_attention(q, k, v, block_mask=mask)
        return flex_attention(q, k, v, block_mask=mask)  # eager reference path (tests on CPU)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, rope_theta: float):
        super().__init__()
        self.num_heads = num_heads
        self.rope_theta = rope_theta
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // num_heads, eps=1e-6)  # QK-norm keeps long-context logits tame
        self.k_norm = nn.RMSNorm(dim // num_heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, pos, mask, context_k=None, context_v=None, context_pos=None):
        # x: (B, Lq, D); pos: (B, Lq); mask: (Lq, Lc + Lq) bool, True = may attend
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.num_heads)
        q, k = self.q_norm(q), self.k_norm(k)
        new_k, new_v = k, v  # cached before rotation: positions are re-indexed at use
        q = rotary(q, pos, self.rope_theta)
        k = rotary(k, pos, self.rope_theta)
        if context_k is not None:
            k = torch.cat([rotary(context_k.to(k.dtype), context_pos, self.rope_theta), k], dim=2)
            v = torch.cat([context_v.to(v.dtype), v], dim=2)
        out = attend(q, k, v, mask)
        return self.proj(rearrange(out, "b h l d -> b l (h d)")), new_k, new_v


class Block(nn.Module):
    """Transformer block with per-frame adaLN-Zero modulation."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope_theta: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, rope_theta)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, pos, mask, context_k=None, context_v=None, context_pos=None):
        # x: (B, T, L, D); c: (B, T, D) one conditioning vector per frame
        B, T, L, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, :, None].chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift1, scale1).reshape(B, T * L, D)
        h, k, v = self.attn(h, pos, mask, context_k, context_v, context_pos)
        x = x + gate1 * h.reshape(B, T, L, D)
        x = x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x, k, v


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------
class VideoDiT(ModelMixin, ConfigMixin):
    """Predicts every frame's clean latents and normalised state (x-prediction, see diffusion.py)."""

    @register_to_config
    def __init__(self, config: dict):
        super().__init__()
        cfg = self.cfg = VideoDiTConfig(**config)
        D, p = cfg.hidden_size, cfg.patch_size
        if cfg.latent_size % p:
            raise ValueError(f"patch_size: {p} does not divide latent_size {cfg.latent_size}")
        if D % cfg.num_heads or (D // cfg.num_heads) % 2:
            raise ValueError(f"hidden_size: {D} must split into {cfg.num_heads} heads of even size")
        self.grid = cfg.latent_size // p

        self.patch_embed = nn.Linear(cfg.latent_channels * p * p, D)
        self.register_buffer("spatial_pos", sincos_2d(self.grid, D), persistent=False)
        self.view_embed = nn.Parameter(torch.zeros(cfg.num_views, D))
        self.camera_pose_embed = nn.Linear(cfg.camera_pose_dim, D)
        self.state_embed = nn.Linear(cfg.state_dim, D)
        self.state_token = nn.Parameter(torch.zeros(D))

        self.noise_embed = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))
        action_in = cfg.frame_stride * (cfg.action_dim + 1)  # + a padding flag per env step
        self.action_embed = nn.Sequential(nn.Linear(action_in, D), nn.SiLU(), nn.Linear(D, D))
        self.null_action = nn.Parameter(torch.zeros(D))  # "no action given": dropout / guidance
        if cfg.condition_on_state:
            self.anchor_state_embed = nn.Sequential(nn.Linear(cfg.state_dim, D), nn.SiLU(), nn.Linear(D, D))
        if cfg.residual_from_first_frame:
            if not cfg.predict_residual:
                raise ValueError("residual_from_first_frame: needs predict_residual=True")
            self.anchor_patch_embed = nn.Linear(cfg.latent_channels * p * p, D)
        if cfg.pixel_anchor_from_memory and not cfg.residual_from_first_frame:
            raise ValueError("pixel_anchor_from_memory: needs residual_from_first_frame=True (the first frame is the "
                             "anchor where memory holds nothing)")
        if cfg.pixel_gate_from_memory:
            if not cfg.residual_from_first_frame or cfg.pixel_anchor_from_memory:
                raise ValueError("pixel_gate_from_memory: needs residual_from_first_frame=True and "
                                 "pixel_anchor_from_memory=False (the gate blends the memory view into the first frame)")
            self.view_patch_embed = nn.Linear(cfg.latent_channels * p * p, D)
            self.out_view_gate = nn.Linear(D, p * p)
        if cfg.deterministic_state and not cfg.predict_residual:
            raise ValueError("deterministic_state: needs predict_residual=True (the state token reads the anchor state)")
        if cfg.linear_state_dynamics:
            if not cfg.predict_residual:
                raise ValueError("linear_state_dynamics: needs predict_residual=True")
            self.actions_to_state = nn.Linear(cfg.action_dim, cfg.state_dim)
        if cfg.condition_on_command:
            if not cfg.predict_residual:
                raise ValueError("condition_on_command: needs predict_residual=True")
            P = len(cfg.pose_indices)
            self.command_embed = nn.Sequential(nn.Linear(P, D), nn.SiLU(), nn.Linear(D, D))
            self.command_to_state = nn.Linear(P, cfg.state_dim)

        self.blocks = nn.ModuleList([Block(D, cfg.num_heads, cfg.mlp_ratio, cfg.rope_theta) for _ in range(cfg.depth)])
        self.final_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.out_latent = nn.Linear(D, cfg.latent_channels * p * p)
        self.out_state = nn.Linear(D, cfg.state_dim)

        def stats(values, size, default):
            return torch.tensor(values if values is not None else [default] * size, dtype=torch.float32)

        self.register_buffer("action_mean", stats(cfg.action_mean, cfg.action_dim, 0.0), persistent=False)
        self.register_buffer("action_std", stats(cfg.action_std, cfg.action_dim, 1.0), persistent=False)
        self.register_buffer("state_mean", stats(cfg.state_mean, cfg.state_dim, 0.0), persistent=False)
        self.register_buffer("state_std", stats(cfg.state_std, cfg.state_dim, 1.0), persistent=False)
        # The commanded pose's gain (A, P) and workspace (P,), built once: the samplers read them every frame.
        gain = cfg.command_gain if cfg.command_gain is not None else cfg.action_to_pose
        self.register_buffer("command_gain", torch.tensor(gain, dtype=torch.float32) if gain is not None
                             else torch.zeros(cfg.action_dim, len(cfg.pose_indices)), persistent=False)
        has_range = cfg.state_min is not None and cfg.state_max is not None
        for name, bound in (("pose_low", cfg.state_min), ("pose_high", cfg.state_max)):
            self.register_buffer(name, torch.tensor(bound, dtype=torch.float32)[list(cfg.pose_indices)]
                                 if has_range else None, persistent=False)
        self.initialize_weights()

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "VideoDiT":
        check_folder_kind(path, "VideoDiT")
        return super().from_pretrained(path, **kwargs)

    def initialize_weights(self):
        """All weight init in one place (DiT): xavier linears, small embeddings, zeroed adaLN and outputs."""
        def xavier(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(xavier)
        nn.init.normal_(self.view_embed, std=0.02)
        nn.init.normal_(self.state_token, std=0.02)
        nn.init.normal_(self.null_action, std=0.02)
        embeddings = [self.noise_embed, self.action_embed]
        if self.cfg.condition_on_state:
            embeddings.append(self.anchor_state_embed)
        if self.cfg.condition_on_command:
            embeddings.append(self.command_embed)
        for mlp in embeddings:
            nn.init.normal_(mlp[0].weight, std=0.02)
            nn.init.normal_(mlp[2].weight, std=0.02)
        # A camera pose only matters once training has learned to use it.
        nn.init.zeros_(self.camera_pose_embed.weight)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        outputs = [self.final_modulation[-1], self.out_latent, self.out_state]
        if self.cfg.linear_state_dynamics:
            outputs.append(self.actions_to_state)
        if self.cfg.condition_on_command:
            outputs.append(self.command_to_state)
        if self.cfg.pixel_gate_from_memory:  # no memory view is read until training finds it worth reading
            outputs += [self.view_patch_embed, self.out_view_gate]
        for layer in outputs:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.cfg.condition_on_command:
            # The robot starts where it is commanded to be: each pose dimension of the predicted state is its
            # commanded value (dead reckoning, within a few cm in MetaWorld); training learns the lag and the rest.
            with torch.no_grad():
                for i, index in enumerate(self.cfg.pose_indices):
                    self.command_to_state.weight[index, i] = 1.0

    # -- normalisation with the dataset's own statistics (they travel in the config) ------------
    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        return (state - self.state_mean) / self.state_std

    def denormalize_state(self, state: torch.Tensor) -> torch.Tensor:
        return state * self.state_std + self.state_mean

    def normalize_pose(self, pose: torch.Tensor) -> torch.Tensor:
        """(..., P) raw pose (the state at pose_indices) -> normalised like the state."""
        index = list(self.cfg.pose_indices)
        return (pose - self.state_mean[index]) / self.state_std[index]

    def command_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The commanded pose's gain (A, P) and workspace (P,) x 2 (None when the model carries no range), in fp32
        whatever the weights' dtype."""
        if self.pose_low is None:
            return self.command_gain.float(), None, None
        return self.command_gain.float(), self.pose_low.float(), self.pose_high.float()

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    # -- input checks: wrong shapes fail here with the field's name, not deep inside a matmul ----
    def check_inputs(self, latents, state, noise_level, actions):
        cfg = self.cfg
        B, T = latents.shape[:2]
        expected = (B, T, cfg.num_views, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        if latents.ndim != 6 or latents.shape[2] != cfg.num_views:
            raise ValueError(f"latents: expected (B, T, V={cfg.num_views}, C, H, W) for views {cfg.camera_keys}, "
                             f"got {tuple(latents.shape)}")
        if tuple(latents.shape) != expected:
            raise ValueError(f"latents: expected {expected} (image size {cfg.image_size}), got {tuple(latents.shape)}")
        if tuple(state.shape) != (B, T, cfg.state_dim):
            raise ValueError(f"state: expected {(B, T, cfg.state_dim)}, got {tuple(state.shape)}")
        if tuple(noise_level.shape) != (B, T):
            raise ValueError(f"noise_level: expected {(B, T)}, got {tuple(noise_level.shape)}")
        self.check_actions(actions, B, T)

    def check_actions(self, actions, B: int, T: int):
        cfg = self.cfg
        if tuple(actions.shape) != (B, T, cfg.frame_stride, cfg.action_dim):
            raise ValueError(f"actions: expected (B, T, frame_stride={cfg.frame_stride}, action_dim={cfg.action_dim})"
                             f" = {(B, T, cfg.frame_stride, cfg.action_dim)}, got {tuple(actions.shape)}")
        if not torch.isfinite(actions).all():
            raise ValueError("actions: contain NaN or inf")
        # Far outside anything seen in training the network's output is meaningless (and can overflow to
        # NaN): refuse it instead of returning black frames.
        worst = self.normalize_actions(actions).abs().amax(dim=(0, 1, 2))  # (A,)
        if bool((worst > self.action_limit_std).any()):
            dim = int(worst.argmax())
            raise ValueError(f"actions: dimension {dim} is {float(worst[dim]):.3g} training standard deviations from "
                             f"the training mean (mean {float(self.action_mean[dim]):.3g}, std "
                             f"{float(self.action_std[dim]):.3g}); at most {self.action_limit_std:g} is accepted")

    # -- forward ---------------------------------------------------------------------------------
    force_flex_attention = False  # tests set this to check the FlexAttention path on CPU
    action_limit_std = 100.0  # actions further than this from the training mean are refused (check_actions)

    def attention_mask(self, T: int, L: int, context_length: int, device, use_flex: bool):
        """Block-causal: a token sees every token of its own and earlier frames, and all context; without
        `state_reads_pictures` a state token sees only state tokens. Dense (T*L, context + T*L) bool for SDPA, or a
        cached BlockMask for FlexAttention."""
        if context_length % L:
            raise ValueError(f"context: {context_length} tokens is not a whole number of frames of {L} tokens")
        frame_of_key = torch.cat([torch.full((context_length,), -1, device=device),
                                  torch.arange(T, device=device).repeat_interleave(L)])
        frame_of_query = frame_of_key[context_length:]
        # Every frame, in the context too, is L tokens with its state token last.
        key_is_picture = torch.arange(context_length + T * L, device=device) % L != L - 1
        query_is_state = ~key_is_picture[context_length:]
        state_reads_pictures = self.cfg.state_reads_pictures
        if not use_flex:
            mask = frame_of_query[:, None] >= frame_of_key[None, :]
            if not state_reads_pictures:
                mask &= ~(query_is_state[:, None] & key_is_picture[None, :])
            return mask
        key = (T, L, context_length, str(device))
        cache = self.__dict__.setdefault("_block_masks", {})
        if key not in cache:
            def block_causal(b, h, q_idx, kv_idx):
                visible = frame_of_query[q_idx] >= frame_of_key[kv_idx]
                if state_reads_pictures:
                    return visible
                return visible & ~(query_is_state[q_idx] & key_is_picture[kv_idx])

            cache[key] = create_block_mask(block_causal, None, None, T * L, context_length + T * L, device=device)
        return cache[key]

    def encode_memory(self, latents, state, frame_pos, valid) -> KVContext:
        """Keys/values of memory frames, each encoded on its own (clean, no action), the same way in
        training and in the streaming sampler. latents (B, M, V, C, H, W); state (B, M, S) normalised;
        frame_pos (B, M) positions (negative: the past); valid (B, M) bool."""
        B, M = latents.shape[:2]
        cfg, L = self.cfg, self.cfg.tokens_per_frame
        out = self(latents.reshape(B * M, 1, *latents.shape[2:]), state.reshape(B * M, 1, -1),
                   latents.new_zeros(B * M, 1),
                   latents.new_zeros(B * M, 1, cfg.frame_stride, cfg.action_dim),
                   action_mask=torch.zeros(B * M, dtype=torch.bool, device=latents.device),
                   frame_pos=latents.new_zeros(B * M, 1), return_kv=True)

        def merge(t):  # (B*M, H, L, Dh) -> (B, H, M*L, Dh)
            return t.reshape(B, M, *t.shape[1:]).permute(0, 2, 1, 3, 4).reshape(B, t.shape[1], M * L, -1)

        return KVContext([merge(k) for k in out["kv"].keys], [merge(v) for v in out["kv"].values],
                         frame_pos.float().repeat_interleave(L, dim=1), valid.repeat_interleave(L, dim=1))

    def frame_conditioning(self, noise_level, actions, actions_is_pad=None, action_mask=None, anchor_state=None,
                           command_offset=None):
        """One vector per frame: noise level + that frame's own action chunk (+ its anchor's state, + the commanded
        pose's offset from it). -> (B, T, D)"""
        B, T = noise_level.shape
        if actions_is_pad is None:
            actions_is_pad = torch.zeros(actions.shape[:3], dtype=torch.bool, device=actions.device)
        a = self.normalize_actions(actions).masked_fill(actions_is_pad[..., None], 0.0)
        a = torch.cat([a, actions_is_pad[..., None].to(a.dtype)], dim=-1).reshape(B, T, -1)  # (B, T, stride*(A+1))
        action_emb = self.action_embed(a)  # (B, T, D)
        if action_mask is not None:  # False -> the unconditional "null action"
            keep = action_mask.reshape(B, -1).expand(B, T)[..., None]
            action_emb = torch.where(keep, action_emb, self.null_action.to(action_emb.dtype))
        c = self.noise_embed(sinusoidal_embedding(noise_level * 1000.0, 256)) + action_emb
        if self.cfg.condition_on_state:
            c = c + self.anchor_state_embed(anchor_state)
        if self.cfg.condition_on_command:
            c = c + self.command_embed(command_offset)
        return c

    def anchors(self, latents, state, noise_level, anchor):
        """Per-frame anchors (latents (B, T, V, C, H, W), normalised state (B, T, S), the raw env actions
        summed since the anchor (B, T, A), and the commanded pose's offset from the anchor's pose (B, T, P)
        normalised): the newest clean frame at or before each frame. Clean frames (a committed frame, a memory
        frame) are their own anchor, so `anchor` may be left out when every frame is clean; frames being denoised
        need it given."""
        cfg = self.cfg
        if anchor is not None:
            if cfg.linear_state_dynamics and "action_sum" not in anchor:
                raise ValueError("anchor: a model with linear_state_dynamics needs anchor['action_sum'] (B, T, A), "
                                 "the env actions summed since each frame's anchor")
            if cfg.condition_on_command and "command" not in anchor:
                raise ValueError("anchor: a model with condition_on_command needs anchor['command'] (B, T, P), each "
                                 "frame's commanded pose, normalised (worldmodel/command.py)")
            offset = None
            if cfg.condition_on_command:
                offset = anchor["command"] - anchor["state"][..., list(cfg.pose_indices)]
            return anchor["latents"], anchor["state"], anchor.get("action_sum"), offset
        if bool((noise_level > 0).any()):
            raise ValueError("anchor: frames with noise_level > 0 need their anchor (the newest clean frame before "
                             "them) when the model predicts residuals or conditions on state")
        # A clean frame is its own anchor: no actions since it, and it is where it was commanded to be.
        offset = state.new_zeros(*state.shape[:2], len(cfg.pose_indices)) if cfg.condition_on_command else None
        return latents, state, None, offset

    def memory_view_change(self, anchor, anchor_latents) -> torch.Tensor:
        """pixel_gate_from_memory: how the memory view differs from each frame's pixel anchor (B, T, V, C, H, W); zero
        for clean frames (their own view), so `anchor` may be left out when every frame is clean."""
        if anchor is None:
            return torch.zeros_like(anchor_latents)
        if "view" not in anchor:
            raise ValueError("anchor: a model with pixel_gate_from_memory needs anchor['view'] (B, T, V, C, H, W), the "
                             "memory frame nearest in pose for frames being denoised and each clean frame's own latents")
        return anchor["view"].to(anchor_latents.dtype) - anchor_latents

    def zero_initialised_additions(self) -> list[str]:
        """Names of the parameters pixel_gate_from_memory adds, zero at init: a model trained without them is this
        network with them at zero, so --init_from may load it and leave them as they are."""
        added = ("view_patch_embed.", "out_view_gate.") if self.cfg.pixel_gate_from_memory else ()
        return [name for name, _ in self.named_parameters() if name.startswith(added)]

    def linear_state_change(self, action_sum, action_mask, B: int, T: int) -> torch.Tensor:
        """The linear part of the state change, from the actions since the anchor. -> (B, T, S) normalised."""
        change = self.actions_to_state(action_sum / self.action_std)
        if action_mask is not None:  # an unconditional prediction knows no actions
            change = change * action_mask.reshape(B, -1).expand(B, T)[..., None].to(change.dtype)
        return change

    def forward(
        self,
        latents: torch.Tensor,  # (B, T, V, C, H, W) noisy latents
        state: torch.Tensor,  # (B, T, S) noisy normalised state
        noise_level: torch.Tensor,  # (B, T) flow-matching time in [0, 1]; 0 = clean
        actions: torch.Tensor,  # (B, T, frame_stride, A) raw env actions
        actions_is_pad: torch.Tensor | None = None,  # (B, T, frame_stride)
        action_mask: torch.Tensor | None = None,  # (B,) or (B, T): False drops the actions
        frame_pos: torch.Tensor | None = None,  # (B, T) time positions; default continues the context
        camera_pose: torch.Tensor | None = None,  # (B, T, V, 12) world-to-camera extrinsics (3x4)
        context: KVContext | None = None,  # clean earlier frames, all visible
        memory: dict | None = None,  # retrieved frames, encoded alone: see encode_memory
        anchor: dict | None = None,  # {"latents": (B,T,V,C,H,W), "state": (B,T,S) normalised, "action_sum": (B,T,A),
        #                                "command": (B,T,P) normalised}
        return_kv: bool = False,
    ):
        cfg = self.cfg
        self.check_inputs(latents, state, noise_level, actions)
        anchor_latents, anchor_state, action_sum, command_offset = (
            self.anchors(latents, state, noise_level, anchor) if cfg.uses_anchor else (None, None, None, None))
        B, T, V = latents.shape[:3]
        if command_offset is not None and action_mask is not None:  # the command comes from the actions
            command_offset = command_offset * action_mask.reshape(B, -1).expand(B, T)[..., None].to(command_offset.dtype)
        if memory is not None:
            context = KVContext.concat([self.encode_memory(**memory), context])
        N, L, p = cfg.tokens_per_view, cfg.tokens_per_frame, cfg.patch_size

        # Tokens: patches of every view (+ view, spatial, camera-pose embeddings) and one state token.
        def patchify(frames):  # (B, T, V, C, H, W) -> (B, T, V, N, C*p*p)
            return rearrange(frames, "b t v c (h p1) (w p2) -> b t v (h w) (c p1 p2)", p1=p, p2=p)

        patches = patchify(latents)
        x = self.patch_embed(patches) + self.spatial_pos + self.view_embed[:, None]  # (B, T, V, N, D)
        if cfg.residual_from_first_frame:  # what each token's change is added to
            x = x + self.anchor_patch_embed(patchify(anchor_latents))
        if cfg.pixel_gate_from_memory:  # and how the remembered view of this place differs from it
            view_change = self.memory_view_change(anchor, anchor_latents)  # (B, T, V, C, H, W)
            x = x + self.view_patch_embed(patchify(view_change))
        if camera_pose is None:  # zeros still go through the layer, so DDP sees every parameter used
            camera_pose = x.new_zeros(B, T, V, cfg.camera_pose_dim)
        x = x + self.camera_pose_embed(camera_pose.reshape(B, T, V, -1))[:, :, :, None]
        x = x.reshape(B, T, V * N, -1)
        state_in = anchor_state if cfg.deterministic_state else state  # a regressed state never reads noise
        state_tok = (self.state_embed(state_in) + self.state_token)[:, :, None]  # (B, T, 1, D)
        x = torch.cat([x, state_tok], dim=2)  # (B, T, L, D)

        c = self.frame_conditioning(noise_level, actions, actions_is_pad, action_mask, anchor_state,
                                    command_offset)  # (B, T, D)

        if frame_pos is None:
            start = context.frame_pos.max(dim=1, keepdim=True).values + 1 if context is not None else 0
            frame_pos = torch.arange(T, device=x.device)[None] + start
        token_pos = frame_pos.repeat_interleave(L, dim=1)  # (B, T*L)
        padded = context is not None and context.valid is not None
        use_flex = not padded and (self.force_flex_attention or (cfg.flex_attention_on_cuda and x.is_cuda))
        mask = self.attention_mask(T, L, context.length if context is not None else 0, x.device, use_flex)
        if padded:  # per-rollout padding of the cache: (B, 1, T*L, Lc + T*L)
            keep = torch.cat([context.valid, context.valid.new_ones(B, T * L)], dim=1)
            mask = mask[None, None] & keep[:, None, None, :]

        new_keys, new_values = [], []
        for i, block in enumerate(self.blocks):
            ctx = (context.keys[i], context.values[i], context.frame_pos) if context is not None else (None, None, None)
            x, k, v = block(x, c, token_pos, mask, *ctx)
            if return_kv:
                new_keys.append(k)
                new_values.append(v)

        shift, scale = self.final_modulation(c)[:, :, None].chunk(2, dim=-1)
        x = modulate(self.final_norm(x), shift, scale)  # (B, T, L, D)
        image_x = x[:, :, :-1].reshape(B, T, V, N, -1)
        out_latents = rearrange(self.out_latent(image_x), "b t v (h w) (c p1 p2) -> b t v c (h p1) (w p2)",
                                h=self.grid, p1=p, p2=p)
        out_state = self.out_state(x[:, :, -1])  # (B, T, S)
        if cfg.predict_residual:
            out_latents, out_state = anchor_latents + out_latents, anchor_state + out_state
            if cfg.pixel_gate_from_memory:  # each pixel's share of the memory view
                gate = rearrange(self.out_view_gate(image_x), "b t v (h w) (p1 p2) -> b t v 1 (h p1) (w p2)",
                                 h=self.grid, p1=p, p2=p)
                out_latents = out_latents + gate * view_change
            if cfg.linear_state_dynamics and action_sum is not None:
                out_state = out_state + self.linear_state_change(action_sum, action_mask, B, T)
            if cfg.condition_on_command:  # zeros for clean frames still pass through (DDP sees every parameter)
                out_state = out_state + self.command_to_state(command_offset)
        out = {"latents": out_latents, "state": out_state}  # (B,T,V,C,H,W), (B,T,S)
        if return_kv:
            out["kv"] = KVContext(new_keys, new_values, token_pos)
        return out


FOLDER_KINDS = {"VideoDiT": "a world model (VideoDiT)", "SuccessJudge": "a success judge (SuccessJudge)"}


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # user/name, and nothing else


def check_pretrained_path(path, expected: str) -> None:
    """Offline by default: a path that is not a local folder is refused by name, unless it is written as a hub
    id (user/name), the one form that may reach the network. Without this, a typo in a local path becomes a
    hub request and an OSError about connections."""
    if Path(path).exists() or HUB_ID.match(str(path)):
        return
    raise FileNotFoundError(f"{path}: no such folder; expected {expected} (a local folder, or a hub id user/name)")


def check_folder_kind(path, expected: str) -> None:
    """A missing local folder is named (check_pretrained_path), and a folder of another kind (a judge passed as a
    world model, ...) is named as such, instead of failing later on an unexpected config key."""
    check_pretrained_path(path, FOLDER_KINDS.get(expected, expected))
    config = Path(path) / "config.json"
    if not config.is_file():
        if Path(path).is_dir():
            raise FileNotFoundError(f"{path}: no config.json; expected {FOLDER_KINDS.get(expected, expected)} "
                                    "(a folder written by save_pretrained)")
        return
    found = json.loads(config.read_text()).get("_class_name")
    if found is not None and found != expected:
        raise ValueError(f"{path}: this folder holds {FOLDER_KINDS.get(found, found)}, but "
                         f"{FOLDER_KINDS.get(expected, expected)} was expected here")


def build_config(preset: str, overrides: dict | None = None, **data_fields) -> VideoDiTConfig:
    """A preset's network sizes, optional size overrides, and the dataset/codec fields."""
    if preset not in PRESETS:
        raise ValueError(f"model.preset: {preset!r} is not one of {sorted(PRESETS)}")
    sizes = PRESETS[preset]()
    sizes.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return VideoDiTConfig(**sizes, **data_fields)


def make_model(config: VideoDiTConfig) -> VideoDiT:
    return VideoDiT(config=asdict(config))

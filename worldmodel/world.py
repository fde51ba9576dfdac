"""WorldModel: batched imagination with the same observation keys as the real env.

    world = WorldModel.from_pretrained("outputs/train/tiny_cpu/model", batch_size=8)
    obs = world.reset(observations)          # {"observation.images.<cam>": (B, H, W, 3) uint8, "observation.state": (B, S)}
    obs = world.step(action_chunk)           # (B, n * frame_stride, A): n new frames, returns the last one

Rollouts are independent: `reset(observations, rollouts=mask)` restarts some of them while the others
keep going, so a batch holds rollouts at different steps. Everything is batched tensor code: there is
no Python loop over rollouts.

A model told the commanded pose (VideoDiTConfig.condition_on_command) starts each rollout's command at the
pose of its reset frame, as a robot at rest is where it is commanded to be: reset from frames where the
robot is still (an episode's first frame, a real env's reset), not from the middle of a fast motion.
"""

from __future__ import annotations

import numpy as np
import torch

from worldmodel.codec import codec_from_description
from worldmodel.model import VideoDiT
from worldmodel.sampler import SamplerConfig, StreamingSampler


class WorldModel:
    def __init__(self, model: VideoDiT, sampler_config: SamplerConfig | None = None, batch_size: int = 1,
                 device=None, codec=None, seed: int = 0, compile: bool = False):
        self.device = torch.device(device) if device is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        # Weights may be shipped in fp16; sampling keeps fp32 weights (autocast runs bf16 math on CUDA).
        self.model = model.to(self.device, torch.float32).eval()
        if compile and self.device.type == "cuda":
            self.model.forward = torch.compile(self.model.forward, dynamic=True)
        self.cfg = model.cfg
        self.codec = (codec or codec_from_description(self.cfg.codec)).to(self.device)
        self.sampler_config = sampler_config or SamplerConfig()
        self.batch_size = batch_size
        self.sampler = StreamingSampler(self.model, self.sampler_config, batch_size, self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.camera_keys = list(self.cfg.camera_keys)
        self.steps = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # env steps per rollout

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "WorldModel":
        model = VideoDiT.from_pretrained(path)
        if "codec" not in kwargs:  # an autoencoder codec lives in the model folder (codec/)
            kwargs["codec"] = codec_from_description(model.cfg.codec, model_folder=path)
        return cls(model, **kwargs)

    # -- input checks ------------------------------------------------------------------------------
    def _images(self, observations: dict) -> torch.Tensor:
        """{key: (B, [K,] H, W, 3) uint8 or (B, [K,] 3, H, W) float in [-1, 1]} -> (B, K, V, 3, H, W)."""
        missing = [k for k in self.camera_keys if k not in observations]
        if missing:
            given = sorted(k for k in observations if k.startswith("observation.images"))
            raise ValueError(f"observations: {len(self.camera_keys)} views expected {self.camera_keys}; "
                             f"missing {missing} (got {given})")
        size = self.cfg.image_size
        views = []
        for key in self.camera_keys:
            x = torch.as_tensor(np.asarray(observations[key]) if not torch.is_tensor(observations[key])
                                else observations[key]).to(self.device)
            if x.dtype == torch.uint8:
                if x.shape[-1] != 3:
                    raise ValueError(f"{key}: uint8 images must be (..., H, W, 3), got {tuple(x.shape)}")
                x = x.movedim(-1, -3).float().div(127.5).sub(1.0)
            if x.ndim == 4:
                x = x[:, None]
            if x.ndim != 5 or tuple(x.shape[-3:]) != (3, size, size) or x.shape[0] != self.batch_size:
                raise ValueError(f"{key}: expected {self.batch_size} images of {size}x{size}x3, got shape "
                                 f"{tuple(x.shape)}")
            views.append(x)
        return torch.stack(views, dim=2)

    def _state(self, observations: dict, K: int) -> torch.Tensor:
        if "observation.state" not in observations:
            raise ValueError("observations: 'observation.state' is missing")
        s = torch.as_tensor(np.asarray(observations["observation.state"]), dtype=torch.float32).to(self.device)
        if s.ndim == 2:
            s = s[:, None]
        if tuple(s.shape) != (self.batch_size, K, self.cfg.state_dim):
            raise ValueError(f"observation.state: expected ({self.batch_size}, {K}, {self.cfg.state_dim}) or "
                             f"({self.batch_size}, {self.cfg.state_dim}), got {tuple(s.shape)}")
        if not torch.isfinite(s).all():
            raise ValueError("observation.state: contains NaN or inf")
        return s

    # -- API ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, observations: dict) -> torch.Tensor:
        """Real pictures of every view, checked as `reset` checks them, -> the codec's latents (B, K, V, C, h, w):
        what a rollout holds for a frame (e.g. to put a real frame in place of a drawn one)."""
        return self._encode(self._images(observations))

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.codec.encode(images)

    @torch.no_grad()
    def reset(self, observations: dict, rollouts=None) -> dict:
        """Start rollouts from one or more real observations of every view (+ state). `rollouts` (B,) bool
        resets only those; the observations of the others are ignored."""
        images = self._images(observations)
        state = self._state(observations, images.shape[1])
        mask = None if rollouts is None else torch.as_tensor(rollouts, dtype=torch.bool, device=self.device)
        self.sampler.reset(self._encode(images), state, mask)
        self.steps = torch.where(mask, 0, self.steps) if mask is not None else torch.zeros_like(self.steps)
        return self._observation(images[:, -1], state[:, -1])

    @torch.no_grad()
    def step(self, action_chunk, return_all: bool = False) -> dict:
        """action_chunk (B, n * frame_stride, A) raw env actions -> the observation after them (and, with
        return_all, every generated frame: images (B, n, ...) per key)."""
        a = torch.as_tensor(np.asarray(action_chunk) if not torch.is_tensor(action_chunk) else action_chunk,
                            dtype=torch.float32).to(self.device)
        stride, A = self.cfg.frame_stride, self.cfg.action_dim
        if a.ndim != 3 or a.shape[0] != self.batch_size or a.shape[-1] != A or a.shape[1] % stride or a.shape[1] == 0:
            raise ValueError(f"action_chunk: expected ({self.batch_size}, n * frame_stride={stride}, action_dim={A}), "
                             f"got {tuple(a.shape)}")
        if not torch.isfinite(a).all():
            raise ValueError("action_chunk: contains NaN or inf")
        a = a.reshape(self.batch_size, -1, stride, A)
        with self._autocast():
            latents, state = self.sampler.rollout(a, self.generator)
        images = self.codec.decode(latents.float())
        self.steps += a.shape[1] * stride
        if return_all:
            return self._observation(images, state.float())
        return self._observation(images[:, -1], state[:, -1].float())

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def _observation(self, images: torch.Tensor, state: torch.Tensor) -> dict:
        """images (B, [n,] V, 3, H, W) in [-1, 1] -> LeRobot keys, uint8 HWC."""
        pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1)
        obs = {key: pixels[..., v, :, :, :] for v, key in enumerate(self.camera_keys)}
        obs["observation.state"] = state
        return obs

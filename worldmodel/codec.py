"""Codecs map images in [-1, 1] to the latent grids the world model diffuses, and back.

    PixelCodec                  the image itself (3, H, W): the default for 64-128 px
    DiffusersAutoencoderCodec   any diffusers autoencoder (AutoencoderKL, AutoencoderTiny, ...), for
                                192x320-class images; latents (c, H/f, W/f), scaled to ~unit variance

Both take and return tensors with any leading dims: (..., 3, H, W) <-> (..., c, h, w). The network
patchifies the latent grid itself, so a codec knows nothing about tokens. A codec is described by a
small JSON dict saved in every checkpoint (`description()` / `codec_from_description`). A model trained
with an autoencoder keeps a copy of it in its own folder (`codec/`, see `save_into`), so the folder opens
wherever it is moved.
"""

from __future__ import annotations

from pathlib import Path

import torch

CODEC_SUBFOLDER = "codec"  # where a model folder keeps its own copy of its autoencoder


class PixelCodec:
    """Identity: the diffusion runs on pixels in [-1, 1]."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.latent_channels = 3
        self.latent_size = image_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1, 1)

    def to(self, device) -> "PixelCodec":
        return self

    def description(self) -> dict:
        return {"type": "pixel", "image_size": self.image_size}

    def packaged_description(self) -> dict:  # nothing to carry: pixels need no weights
        return self.description()

    def save_into(self, model_folder) -> None:
        pass


class DiffusersAutoencoderCodec:
    """Wraps a diffusers autoencoder; latents are `(z - shift) * scale` so that they are ~unit variance."""

    def __init__(self, autoencoder, image_size: int, path: str | None = None,
                 scaling_factor: float | None = None, shift_factor: float | None = None,
                 subfolder: str | None = None):
        config = autoencoder.config
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.image_size = image_size
        self.path, self.subfolder = path, subfolder
        self.scaling_factor = float(scaling_factor if scaling_factor is not None
                                    else getattr(config, "scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(shift_factor if shift_factor is not None
                                  else getattr(config, "shift_factor", 0.0) or 0.0)
        self.latent_channels = int(config.latent_channels)
        # Every encoder block but the last halves the resolution (AutoencoderKL, AutoencoderTiny alike).
        blocks = getattr(config, "block_out_channels", None) or getattr(config, "encoder_block_out_channels")
        self.downsample = 2 ** (len(blocks) - 1)
        if image_size % self.downsample:
            raise ValueError(f"image_size: {image_size} is not divisible by the autoencoder's factor {self.downsample}")
        self.latent_size = image_size // self.downsample

    @classmethod
    def from_pretrained(cls, path: str, image_size: int, subfolder: str | None = None, **kwargs):
        from diffusers import AutoModel

        autoencoder = AutoModel.from_pretrained(path, subfolder=subfolder)
        return cls(autoencoder, image_size, path=str(path), subfolder=subfolder, **kwargs)

    def _flatten(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        return x.reshape(-1, *x.shape[-3:]), x.shape[:-3]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        flat, lead = self._flatten(images)
        dtype = next(self.autoencoder.parameters()).dtype
        out = self.autoencoder.encode(flat.to(dtype))
        # AutoencoderKL returns a distribution (its mean is the deterministic latent); Tiny returns latents.
        z = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents
        z = (z.float() - self.shift_factor) * self.scaling_factor
        return z.reshape(*lead, *z.shape[1:])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        flat, lead = self._flatten(latents)
        dtype = next(self.autoencoder.parameters()).dtype
        images = self.autoencoder.decode((flat / self.scaling_factor + self.shift_factor).to(dtype)).sample
        return images.float().clamp(-1, 1).reshape(*lead, *images.shape[1:])

    def to(self, device) -> "DiffusersAutoencoderCodec":
        self.autoencoder.to(device)
        return self

    def description(self) -> dict:
        if self.path is None:
            raise ValueError("codec: an autoencoder built in memory has no path; save it with "
                             "save_pretrained(dir) and load it with DiffusersAutoencoderCodec.from_pretrained(dir)")
        return {"type": "diffusers_autoencoder", "path": self.path, "subfolder": self.subfolder,
                "image_size": self.image_size, "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor}

    def packaged_description(self) -> dict:
        """The description a model folder stores: its own copy (`codec/`, written by `save_into`), and where
        that copy came from."""
        source = self.path + (f" (subfolder {self.subfolder})" if self.subfolder else "")
        return {**self.description(), "path": CODEC_SUBFOLDER, "subfolder": None, "source": source}

    def save_into(self, model_folder) -> None:
        self.autoencoder.save_pretrained(Path(model_folder) / CODEC_SUBFOLDER)


def codec_from_description(description: dict, model_folder=None):
    """Rebuild the codec a checkpoint was trained with; a relative path is inside `model_folder`."""
    if description["type"] == "pixel":
        return PixelCodec(description["image_size"])
    if description["type"] == "diffusers_autoencoder":
        path = Path(description["path"])
        if not path.is_absolute() and model_folder is not None:
            path = Path(model_folder) / path
        return DiffusersAutoencoderCodec.from_pretrained(
            str(path), description["image_size"], subfolder=description.get("subfolder"),
            scaling_factor=description["scaling_factor"], shift_factor=description["shift_factor"])
    raise ValueError(f"codec: unknown type {description['type']!r}; expected 'pixel' or 'diffusers_autoencoder'")

"""Codecs: pixels as they are, and any diffusers autoencoder loaded from a folder (random weights here)."""

import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from worldmodel.codec import DiffusersAutoencoderCodec, PixelCodec, codec_from_description
from worldmodel.diffusion import FlowMatching
from worldmodel.model import build_config, make_model


def test_pixel_codec_is_the_identity():
    codec = PixelCodec(32)
    x = torch.rand(2, 3, 2, 3, 32, 32) * 2 - 1
    assert torch.equal(codec.decode(codec.encode(x)), x)
    assert codec_from_description(codec.description()).latent_size == 32


def tiny_autoencoder_kl() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         layers_per_block=1, norm_num_groups=8, sample_size=32)


def test_autoencoder_kl_codec_from_a_saved_folder(tmp_path):
    tiny_autoencoder_kl().save_pretrained(tmp_path / "vae")
    codec = DiffusersAutoencoderCodec.from_pretrained(str(tmp_path / "vae"), image_size=32)
    assert codec.downsample == 4 and codec.latent_channels == 4 and codec.latent_size == 8
    images = torch.rand(2, 3, 2, 3, 32, 32) * 2 - 1  # (B, T, V, 3, H, W)
    latents = codec.encode(images)
    assert latents.shape == (2, 3, 2, 4, 8, 8)
    assert codec.decode(latents).shape == images.shape
    # The checkpoint's description rebuilds the same codec.
    again = codec_from_description(codec.description())
    torch.testing.assert_close(again.encode(images), latents)

    # And the world model trains on its latents.
    cfg = build_config("tiny", dict(hidden_size=32, depth=1, num_heads=2, patch_size=2, residual_from_first_frame=False),
                       num_views=2,
                       latent_channels=4, latent_size=8, image_size=32, frame_stride=3, codec=codec.description())
    model = make_model(cfg)
    loss, _ = FlowMatching().loss(model, latents, torch.randn(2, 3, 39), torch.randn(2, 3, 3, 4),
                                  command=torch.randn(2, 3, 4))
    loss.backward()
    assert torch.isfinite(loss) and model.out_latent.weight.grad.abs().sum() > 0


def test_autoencoder_tiny_codec(tmp_path):
    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                    num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1),
                    latent_channels=4).save_pretrained(tmp_path / "taesd")
    codec = DiffusersAutoencoderCodec.from_pretrained(str(tmp_path / "taesd"), image_size=32)
    latents = codec.encode(torch.rand(1, 2, 3, 32, 32) * 2 - 1)
    assert latents.shape == (1, 2, 4, 32 // codec.downsample, 32 // codec.downsample)
    assert codec.decode(latents).shape == (1, 2, 3, 32, 32)


def test_latents_precomputed_into_the_dataset_cache(tmp_path, tiny_dataset_root, monkeypatch):
    from worldmodel.dataset import ClipDataset, DatasetConfig

    tiny_autoencoder_kl().save_pretrained(tmp_path / "vae")
    codec = DiffusersAutoencoderCodec.from_pretrained(str(tmp_path / "vae"), image_size=32)
    clips = ClipDataset(DatasetConfig(root=str(tiny_dataset_root), repo_id="test/tiny",
                                      camera_keys=["corner", "gripperPOV"], image_size=32, frame_stride=3,
                                      clip_frames=4, memory_frames=2))
    path = clips.attach_latents(codec, batch_size=16)
    item = clips[50]
    assert item["latents"].shape == (4, 2, 4, 8, 8) and item["memory_latents"].shape == (2, 2, 4, 8, 8)
    torch.testing.assert_close(item["latents"], codec.encode(item["images"]), atol=2e-2, rtol=2e-2)  # fp16
    # A second dataset with the same codec reuses the file instead of encoding again.
    again = ClipDataset(clips.cfg)
    monkeypatch.setattr(codec, "encode", lambda x: (_ for _ in ()).throw(AssertionError("re-encoded")))
    assert again.attach_latents(codec) == path


def test_a_model_trained_with_an_autoencoder_in_a_subfolder_opens_after_being_moved(tmp_path, tiny_dataset_root):
    import shutil

    from worldmodel.train import main as train_main
    from worldmodel.world import WorldModel

    tiny_autoencoder_kl().save_pretrained(tmp_path / "hub_repo" / "vae")  # a repo whose autoencoder is a subfolder
    args = {"dataset.root": tiny_dataset_root, "dataset.repo_id": "test/tiny", "dataset.camera_keys": "[corner,gripperPOV]",
            "dataset.image_size": 32, "dataset.frame_stride": 3, "dataset.clip_frames": 4, "dataset.memory_frames": 2,
            "codec.autoencoder": tmp_path / "hub_repo", "codec.subfolder": "vae", "model.patch_size": 2,
            "model.hidden_size": 32, "model.depth": 1, "model.num_heads": 2, "train.steps": 2, "train.batch_size": 2,
            "train.num_workers": 0, "train.val_episodes": 1, "train.val_clips": 2, "train.val_sampling_steps": 1,
            "output_dir": tmp_path / "run"}
    train_main([f"--{k}={v}" for k, v in args.items()])
    moved = tmp_path / "elsewhere" / "model"
    shutil.move(tmp_path / "run" / "model", moved)
    shutil.rmtree(tmp_path / "hub_repo")  # the original autoencoder is gone too
    world = WorldModel.from_pretrained(moved, batch_size=1, device="cpu")
    assert world.codec.latent_size == 8 and world.codec.path == str(moved / "codec")
    images = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    assert world.codec.decode(world.codec.encode(images)).shape == images.shape

"""Tiny offline model presets: seeded random weights built from small configs.

No pretrained CLIP or Stable Diffusion weights exist without a model hub, so tests and the offline demo use these.
They are written to disk once (atomically) and then loaded through exactly the code paths real weights use:
open_clip ``create_model_and_transforms(arch, pretrained=<file>)`` and diffusers ``from_pretrained(<dir>)``.
Their predictions are meaningless; the UI and the logs say so.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

TINY_CLIP_ARCH = "air-tiny-clip"
TINY_PRESET_VERSION = "1"
TINY_SEED = 0
CONFIG_DIR = Path(__file__).parent / "configs"
_build_lock = threading.Lock()


def tiny_cache_dir() -> Path:
    """Where the tiny presets are materialised: $AIR_APP_CACHE, else ~/.cache/air_app."""
    root = os.environ.get("AIR_APP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "air_app")
    return Path(root) / f"tiny-v{TINY_PRESET_VERSION}"


def register_tiny_clip_config() -> None:
    import open_clip

    if TINY_CLIP_ARCH not in open_clip.list_models():
        open_clip.add_model_config(str(CONFIG_DIR / f"{TINY_CLIP_ARCH}.json"))


def _materialise(target: Path, build) -> Path:
    """Run `build(tmp_dir)` and rename the result to `target` unless it already exists (atomic, race-safe)."""
    with _build_lock:
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            build(tmp)
            try:
                os.replace(tmp, target)
            except OSError:  # another process won the race
                if not target.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target


def tiny_clip_checkpoint() -> Path:
    """Path of the tiny CLIP checkpoint (safetensors), built on first use with seed 0.

    The logit scale is set to 100, as in a trained CLIP, so the softmax temperatures match real use.
    """
    import math

    import torch

    def build(tmp: Path) -> None:
        import open_clip
        from safetensors.torch import save_file

        register_tiny_clip_config()
        torch.manual_seed(TINY_SEED)
        model = open_clip.create_model(TINY_CLIP_ARCH, pretrained=None)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(100.0))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "open_clip_model.safetensors"))

    return _materialise(tiny_clip_checkpoint_dir(), build) / "open_clip_model.safetensors"


def tiny_clip_checkpoint_dir() -> Path:
    return tiny_cache_dir() / "clip"


def clip_bpe_tokenizer(model_max_length: int = 77):
    """A transformers CLIPTokenizer rebuilt offline from open_clip's bundled BPE file (OpenAI CLIP ids)."""
    import open_clip.tokenizer as oct
    from transformers import CLIPTokenizer

    b2u = list(oct.bytes_to_unicode().values())
    merges = gzip.open(oct.default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    vocab = b2u + [v + "</w>" for v in b2u] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[tuple(m.split()) for m in merges],
                         model_max_length=model_max_length)


def build_tiny_pipeline(seed: int = TINY_SEED):
    """A small Stable Diffusion pipeline (UNet, VAE, text encoder) with seeded random weights. 64 px images."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = clip_bpe_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def tiny_diffusion_dir() -> Path:
    """A `save_pretrained` directory holding the tiny pipeline, built on first use."""

    def build(tmp: Path) -> None:
        build_tiny_pipeline().save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "AIR_TINY_PRESET.json").write_text(json.dumps({"seed": TINY_SEED, "version": TINY_PRESET_VERSION}))

    return _materialise(tiny_cache_dir() / "diffusion", build)

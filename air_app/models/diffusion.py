"""Stable Diffusion through diffusers: loading, LoRA fine-tuning with peft (resumable), and seeded generation.

Specs: a hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``), a local ``save_pretrained`` directory, or
``tiny`` (see :mod:`air_app.models.tiny`). The safety checker is off: on benign data it returns black images.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..workspace import atomic_write_bytes, atomic_write_text
from . import tiny

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def diffusion_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, "model_index.json")
    return isinstance(hit, str) and os.path.isfile(hit)


def resolve_diffusion_source(spec: str) -> tuple[str, str]:
    """-> (path or hub id for from_pretrained, kind in {tiny, dir, hub})."""
    spec = (spec or "").strip()
    if not spec:
        raise UserError("empty diffusion spec: use a hub id, a local save_pretrained folder, or tiny")
    if spec == "tiny":
        return str(tiny.tiny_diffusion_dir()), "tiny"
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not (path / "model_index.json").is_file():
            raise UserError(f"diffusion folder {path} has no model_index.json (expected a save_pretrained layout)")
        return str(path.resolve()), "dir"
    if spec.count("/") != 1:
        raise UserError(f"diffusion spec {spec!r} is neither a folder nor a hub id like org/name")
    return spec, "hub"


def load_pipeline(spec: str, device: torch.device):
    """A StableDiffusionPipeline on `device` (fp16 on CUDA) with the DPM-Solver++ scheduler and no safety checker."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    source, kind = resolve_diffusion_source(spec)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if kind == "hub" and offline and not diffusion_cached(source):
        raise UserError(
            f"Stable Diffusion {source} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1: download it on a "
            f"connected machine, or pass --diffusion /path/to/save_pretrained_dir, or use --models tiny")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, dtype=dtype, safety_checker=None, requires_safety_checker=False,
            local_files_only=kind != "hub" or offline)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"could not load Stable Diffusion {spec} ({first})") from None
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    pipe.air_kind = kind
    pipe.air_source = source
    return pipe


def native_resolution(pipe) -> int:
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


# ------------------------------------------------------------------------------------------------------ LoRA
@dataclass
class LoraSettings:
    rank: int = 8
    alpha: float = 8.0
    lr: float = 1e-4
    steps: int = 1000
    batch_size: int = 4
    resolution: int = 512
    checkpoint_every: int = 100
    seed: int = 0


def _lora_config(s: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(r=s.rank, lora_alpha=s.alpha, init_lora_weights="gaussian", target_modules=LORA_TARGETS)


def _to_pixels(images: Sequence, resolution: int) -> torch.Tensor:
    """PIL images -> [-1, 1] tensors at `resolution` (shorter side resized, centre crop)."""
    from PIL import Image

    out = []
    for img in images:
        img = img.convert("RGB")
        w, h = img.size
        scale = resolution / min(w, h)
        img = img.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        out.append(arr)
    return torch.stack(out)


def finetune_lora(pipe, images: Sequence, captions: Sequence[str], settings: LoraSettings, out_dir: Path,
                  progress: Callable[[int, int, float], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> Path:
    """Fine-tune LoRA adapters on the UNet attention with the latent-diffusion noise-prediction loss.

    L_LDM = E ||ε − ε_θ'(z_t, t, τ(c))||². Resumable: every `checkpoint_every` steps the adapter, optimizer and RNG
    state go to ``out_dir/checkpoint``; a restart continues from there. On success the adapter is saved as
    ``out_dir/pytorch_lora_weights.safetensors`` and removed from `pipe` again, so the shared pipeline is unchanged.
    Returns the weights file. Raises InterruptedError if `should_stop()` became true (the checkpoint is kept).
    """
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    if not images:
        raise UserError("LoRA fine-tuning needs at least one usable image")
    device = pipe.device
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    ckpt_dir = out_dir / "checkpoint"
    config = _lora_config(settings)
    with torch.random.fork_rng(devices=[]):  # seeded LoRA init, without touching the global RNG
        torch.manual_seed(settings.seed)
        unet.add_adapter(config, adapter_name="air_train")
    try:
        if device.type == "cuda":
            from diffusers.training_utils import cast_training_params

            cast_training_params(unet, dtype=torch.float32)
        params = [p for p in unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=settings.lr)
        start = 0
        order: list[int] = []  # the current epoch's remaining image order (part of the resumable state)
        rng = random.Random(settings.seed)
        gen = torch.Generator("cpu").manual_seed(settings.seed)
        state_file = ckpt_dir / "state.json"
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            if state.get("settings") == _settings_key(settings, len(images)):
                set_peft_model_state_dict(unet, load_file(str(ckpt_dir / "adapter.safetensors")),
                                          adapter_name="air_train")
                optimizer.load_state_dict(torch.load(ckpt_dir / "optimizer.pt", weights_only=True))
                start = int(state["step"])
                rng.setstate(_tuplify(state["py_rng"]))
                order = [int(i) for i in state["order"]]
                gen.set_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        # Encode every image once: VAE latents are fixed (frozen VAE; we sample from the posterior each step).
        with torch.no_grad():
            pix = _to_pixels(images, settings.resolution)
            moments = []
            for i in range(0, len(pix), 8):
                dist = vae.encode(pix[i:i + 8].to(device, vae.dtype)).latent_dist
                moments.append((dist.mean.float().cpu(), dist.std.float().cpu()))
            means = torch.cat([m for m, _ in moments])
            stds = torch.cat([s for _, s in moments])
            ids = pipe.tokenizer(list(captions), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            enc = torch.cat([text_encoder(ids[i:i + 32].to(device), return_dict=False)[0].float().cpu()
                             for i in range(0, len(ids), 32)])
        unet.train()
        for step in range(start, settings.steps):
            if should_stop is not None and should_stop():
                _save_checkpoint(unet, optimizer, ckpt_dir, step, settings, len(images), rng, gen, order)
                raise InterruptedError("LoRA fine-tuning cancelled")
            batch = []
            for _ in range(min(settings.batch_size, len(images))):
                if not order:
                    order = list(range(len(images)))
                    rng.shuffle(order)
                batch.append(order.pop())
            idx = torch.tensor(batch)
            latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen))
            latents = (latents * vae.config.scaling_factor).to(device)
            noise = torch.randn(latents.shape, generator=gen).to(device)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(batch),), generator=gen).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                pred = unet(noisy.to(unet.dtype), t, enc[idx].to(device, unet.dtype), return_dict=False)[0]
            target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
                noise_scheduler.get_velocity(latents, noise, t)
            loss = F.mse_loss(pred.float(), target.float())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            if progress is not None:
                progress(done, settings.steps, float(loss.item()))
            if done % settings.checkpoint_every == 0 and done < settings.steps:
                _save_checkpoint(unet, optimizer, ckpt_dir, done, settings, len(images), rng, gen, order)
        unet.eval()
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name="air_train"))
        tmp_dir = out_dir / ".saving"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        metadata = config.to_dict() if settings.alpha != settings.rank else None
        StableDiffusionPipeline.save_lora_weights(save_directory=str(tmp_dir), unet_lora_layers=layers,
                                                  safe_serialization=True, unet_lora_adapter_metadata=metadata)
        final = out_dir / LORA_WEIGHTS
        os.replace(tmp_dir / LORA_WEIGHTS, final)
        tmp_dir.rmdir()
        for f in ckpt_dir.glob("*"):
            f.unlink()
        if ckpt_dir.exists():
            ckpt_dir.rmdir()
        return final
    finally:
        unet.eval()
        _remove_adapters(pipe)


def _tuplify(x):
    return tuple(_tuplify(i) for i in x) if isinstance(x, list) else x


def _settings_key(s: LoraSettings, n_images: int) -> dict:
    return {"rank": s.rank, "alpha": s.alpha, "lr": s.lr, "batch_size": s.batch_size, "resolution": s.resolution,
            "seed": s.seed, "n_images": n_images}


def _save_checkpoint(unet, optimizer, ckpt_dir: Path, step: int, settings: LoraSettings, n_images: int,
                     rng: random.Random, gen: torch.Generator, order: list[int]) -> None:
    import io

    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet, adapter_name="air_train").items()}
    atomic_write_bytes(ckpt_dir / "adapter.safetensors", save(sd))
    buf = io.BytesIO()
    torch.save(optimizer.state_dict(), buf)
    atomic_write_bytes(ckpt_dir / "optimizer.pt", buf.getvalue())
    # state.json last: a checkpoint counts only once all its parts are on disk
    atomic_write_text(ckpt_dir / "state.json", json.dumps({
        "step": step, "settings": _settings_key(settings, n_images), "py_rng": rng.getstate(),
        "torch_rng": gen.get_state().tolist(), "order": order}))


def _remove_adapters(pipe) -> None:
    """Take every LoRA layer out of the UNet so the shared pipeline is the base model again."""
    unet = pipe.unet
    if getattr(unet, "_hf_peft_config_loaded", False) or getattr(unet, "peft_config", None):
        try:
            pipe.unload_lora_weights()
        except Exception:
            unet.unload_lora()


def load_lora(pipe, weights_file: Path, adapter_name: str = "air") -> None:
    """Attach a saved LoRA (alpha metadata honoured) to `pipe`."""
    _remove_adapters(pipe)
    pipe.load_lora_weights(str(weights_file.parent), weight_name=weights_file.name, adapter_name=adapter_name)


def unload_lora(pipe) -> None:
    _remove_adapters(pipe)


# ------------------------------------------------------------------------------------------------ generation
def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance: float, resolution: int,
             negative_prompt: str = "", should_stop: Callable[[], bool] | None = None) -> list:
    """One image per (prompt, seed); image i depends only on its own seed (one CPU generator per image)."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]

    def on_step(p, step, timestep, kwargs):
        if should_stop is not None and should_stop():
            p._interrupt = True
        return kwargs

    out = pipe(list(prompts), height=resolution, width=resolution, num_inference_steps=steps,
               guidance_scale=guidance, negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None,
               generator=generators, callback_on_step_end=on_step)
    if getattr(pipe, "_interrupt", False):
        pipe._interrupt = False
        raise InterruptedError("generation cancelled")
    return list(out.images)

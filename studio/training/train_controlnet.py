"""The built-in scribble ControlNet: a diffusers ``ControlNetModel`` trained beside the frozen built-in model.

The built-in U-Net, text encoder and VAE (``models/builtin``) are frozen; only the ControlNet learns. It is the
built-in U-Net's encoder copied (diffusers' ``from_unet`` convention: time embedding, down blocks, mid block) with
a 3x3 input convolution over the 4-channel noisy latent (diffusers' inpaint + ControlNet pipeline gives a ControlNet
the latent alone, not the mask and masked image): initialised from the centre 3x3 of the U-Net's 11x11 kernel on its
first 4 input channels. The hint encoder (control image 64x64 -> 16x16) and the zero convolutions start at zero, as
usual, so the first step is the frozen model unchanged.

The U-Net runs as the engine runs it for text-to-image: the all-ones mask and the masked-image latent of a black
picture. The loss is the U-Net's own (epsilon, min-SNR with the raised weight at high noise, offset noise): the
layout, which is what a scribble decides, is made at high noise.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .common import (
    EMA,
    JsonLog,
    StepLoop,
    load_checkpoint,
    require,
    resume,
    save_checkpoint,
    seed_everything,
    set_threads,
    training_state,
)
from .control_data import TRAIN_STREAM, ScribbleDataset
from .data import to_tensor_batch
from .models import NUM_TRAIN_TIMESTEPS, load_tokenizer, tokenize
from .train_unet import loss_weights, make_noise_scheduler

DEFAULT_BASE = "models/builtin"
HINT_CHANNELS = (16, 32, 64)  # the control image's encoder: 64x64 -> 16x16 (two stride-2 convolutions)


@dataclass
class ControlPreset:
    name: str
    pool_size: int = 16000  # outline / picture pairs drawn and encoded once
    steps: int = 4000
    batch: int = 16
    lr: float = 2e-4
    warmup: int = 50
    ema_decay: float = 0.998
    uncond_prob: float = 0.15  # empty captions (classifier-free guidance; the ControlNet runs on both halves)
    noise_offset: float = 0.1  # as the U-Net was trained
    x0_floor: float = 0.2
    high_noise_cap: float = 15.0
    threads: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


CONTROL_PRESETS: dict[str, ControlPreset] = {
    "cpu": ControlPreset("cpu"),
    "tiny": ControlPreset("tiny", pool_size=24, steps=4, batch=4, warmup=2, ema_decay=0.9),
    "gpu": ControlPreset("gpu", pool_size=200_000, steps=30_000, batch=128, lr=1e-4, warmup=500, ema_decay=0.9999,
                         threads=8),
}


def load_base(base: Path):
    """(tokenizer, text encoder, VAE, U-Net) of the built-in model, frozen, float32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    require(base / "unet" / "config.json", "base model", "a diffusers folder such as models/builtin")
    kw = dict(local_files_only=True, torch_dtype=torch.float32)
    tokenizer = load_tokenizer(base / "tokenizer") if (base / "tokenizer").is_dir() else load_tokenizer()
    text = CLIPTextModel.from_pretrained(str(base / "text_encoder"), **kw)
    vae = AutoencoderKL.from_pretrained(str(base / "vae"), **kw)
    unet = UNet2DConditionModel.from_pretrained(str(base / "unet"), **kw)
    for m in (text, vae, unet):
        m.requires_grad_(False).eval()
    return tokenizer, text, vae, unet


def build_controlnet(unet, init: bool = True):
    """A ControlNetModel shaped like ``unet``'s encoder (4 latent channels in), its weights copied where they fit."""
    from diffusers import ControlNetModel

    c = unet.config
    net = ControlNetModel(
        in_channels=4,
        conditioning_channels=3,
        flip_sin_to_cos=c.flip_sin_to_cos,
        freq_shift=c.freq_shift,
        down_block_types=tuple(c.down_block_types),
        block_out_channels=tuple(c.block_out_channels),
        layers_per_block=c.layers_per_block,
        downsample_padding=c.downsample_padding,
        mid_block_scale_factor=c.mid_block_scale_factor,
        norm_num_groups=c.norm_num_groups,
        norm_eps=c.norm_eps,
        cross_attention_dim=c.cross_attention_dim,
        attention_head_dim=c.attention_head_dim,
        use_linear_projection=c.use_linear_projection,
        upcast_attention=c.upcast_attention,
        conditioning_embedding_out_channels=HINT_CHANNELS,
    )
    if init:
        for name in ("time_proj", "time_embedding", "down_blocks", "mid_block"):
            getattr(net, name).load_state_dict(getattr(unet, name).state_dict())
        w = unet.conv_in.weight.detach()  # (C, 9, k, k): the centre 3x3 on the latent's 4 channels
        o = (w.shape[-1] - 3) // 2
        with torch.no_grad():
            net.conv_in.weight.copy_(w[:, :4, o : o + 3, o : o + 3])
            net.conv_in.bias.copy_(unet.conv_in.bias)
    return net


@torch.no_grad()
def build_pool(vae, tokenizer, size: int, seed: int, batch: int = 128, progress: bool = True) -> dict:
    """``size`` scribble samples: the target's latent (unscaled mean), the outline (uint8) and the caption ids."""
    ds = ScribbleDataset(TRAIN_STREAM + seed)
    lat = torch.empty(size, 4, 16, 16, dtype=torch.float16)
    ctl = torch.empty(size, 64, 64, dtype=torch.uint8)
    captions: list[str] = []
    for s in tqdm(range(0, size, batch), desc="draw + encode pool", disable=not progress, mininterval=5):
        idx = range(s, min(size, s + batch))
        samples = [ds.sample(i) for i in idx]
        captions += [x.caption for x in samples]
        lat[s : s + len(idx)] = vae.encode(to_tensor_batch([x.target for x in samples])).latent_dist.mean.half()
        ctl[s : s + len(idx)] = torch.from_numpy(np.stack([x.control for x in samples]))
    uniq = sorted(set(captions))
    where = {c: k for k, c in enumerate(uniq)}
    ids = tokenize(tokenizer, uniq)[torch.tensor([where[c] for c in captions])].to(torch.int32)
    blank = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean.half()
    return {"lat": lat, "control": ctl, "ids": ids, "blank": blank, "size": size, "seed": seed}


def controlled_eps(unet, controlnet, zt, t, h, cond, mask, mlat, scale: float = 1.0):
    """The U-Net's prediction with the ControlNet's residuals, as diffusers' inpaint + ControlNet pipeline runs it."""
    down, mid = controlnet(zt, t, encoder_hidden_states=h, controlnet_cond=cond, conditioning_scale=scale,
                           return_dict=False)
    return unet(torch.cat([zt, mask, mlat], dim=1), t, encoder_hidden_states=h,
                down_block_additional_residuals=down, mid_block_additional_residual=mid).sample


def train_controlnet(
    run_dir: Path,
    preset: ControlPreset,
    base: Path = Path(DEFAULT_BASE),
    steps: int | None = None,
    seed: int = 0,
    checkpoint_every_s: float = 180.0,
    time_budget_minutes: float | None = None,
    progress: bool = True,
) -> dict:
    t_start = time.time()
    set_threads(preset.threads)
    seed_everything(seed)
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = steps or preset.steps
    tokenizer, text_encoder, vae, unet = load_base(Path(base))
    sf = float(vae.config.scaling_factor)
    pool = load_checkpoint(out / "pool.pt")
    if pool is None or pool["size"] != preset.pool_size or pool["seed"] != seed:
        pool = build_pool(vae, tokenizer, preset.pool_size, seed, progress=progress)
        save_checkpoint(out / "pool.pt", pool)
    del vae
    n_pool = int(pool["size"])
    empty_ids = tokenize(tokenizer, [""])[0].long()
    net = build_controlnet(unet)
    opt = torch.optim.AdamW(net.parameters(), lr=preset.lr, weight_decay=1e-2, betas=(0.9, 0.99))
    modules = {"controlnet": net}
    ema = EMA(modules, preset.ema_decay)
    ckpt_path = out / "checkpoint.pt"
    start, trained_s = resume(load_checkpoint(ckpt_path), modules, opt, ema, "ControlNet training")
    meta = {"preset": preset.to_dict(), "base": str(base), "seed": seed, "scaling_factor": sf}
    (out / "train_config.json").write_text(json.dumps(meta, indent=2))
    log = JsonLog(out / "log.jsonl")

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, training_state(modules, opt, ema, step=step, trained_s=trained_s,
                                                  preset=preset.to_dict(), base=str(base), config=dict(net.config)))

    sched = make_noise_scheduler()
    B = preset.batch
    blank = pool["blank"].float() * sf
    ones = torch.ones(B, 1, 16, 16)
    budget_s = time_budget_minutes * 60 if time_budget_minutes else None
    loop = StepLoop(save, start=start, steps=10**9 if budget_s else steps, desc="train-controlnet", log_every=20,
                    checkpoint_every_s=checkpoint_every_s, budget_s=budget_s, started=t_start, progress=progress)
    net.train()
    ema_loss = None
    step = start
    for step in loop:
        t0 = time.time()
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, n_pool, (B,), generator=g)
        ids = pool["ids"][idx].long()
        ids[torch.rand(B, generator=g) < preset.uncond_prob] = empty_ids
        z0 = pool["lat"][idx].float() * sf
        noise = torch.randn(z0.shape, generator=g)
        if preset.noise_offset:
            noise = noise + preset.noise_offset * torch.randn(B, 4, 1, 1, generator=g)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (B,), generator=g)
        zt = sched.add_noise(z0, noise, t)
        cond = (pool["control"][idx].float() / 255.0)[:, None].expand(-1, 3, -1, -1)
        with torch.no_grad():
            h = text_encoder(ids).last_hidden_state
        for gr in opt.param_groups:
            gr["lr"] = loop.lr(step, preset.lr, preset.warmup, trained_s)
        pred = controlled_eps(unet, net, zt, t, h, cond, ones, blank.expand(B, -1, -1, -1))
        per = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per * loss_weights(sched, t, x0_floor=preset.x0_floor, cap=preset.high_noise_cap)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update(modules)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        dt = time.time() - t0
        trained_s += dt
        if loop.logs(step):
            log.write(step=step, loss=round(loss.item(), 5), loss_ema=round(ema_loss, 5),
                      eps_mse=round(per.mean().item(), 5), lr=opt.param_groups[0]["lr"], step_s=round(dt, 3))
            loop.bar.set_postfix(loss=f"{ema_loss:.4f}")
        loop.end_step(step, trained_s)
    steps = step + 1
    save(steps)
    result = {"steps": steps, "minutes": round((time.time() - t_start) / 60, 1),
              "training_minutes": round(trained_s / 60, 1), "final_loss_ema": ema_loss}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


def controlnet_from_checkpoint(ck: dict, use_ema: bool = True):
    """The ControlNetModel of a training checkpoint (the EMA weights by default)."""
    from diffusers import ControlNetModel

    net = ControlNetModel.from_config(ck["config"])
    net.load_state_dict(ck["ema"]["shadow"]["controlnet"] if use_ema else ck["controlnet"])
    return net.eval()


def main_train_controlnet(args) -> None:
    preset = CONTROL_PRESETS[args.preset]
    for flag in ("batch", "lr", "threads", "pool_size"):
        if getattr(args, flag, None) is not None:
            setattr(preset, flag, getattr(args, flag))
    train_controlnet(Path(args.run_dir), preset, base=Path(args.base), steps=args.steps, seed=args.seed,
                     time_budget_minutes=args.time_budget_minutes)

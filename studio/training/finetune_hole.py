"""Phase 6: fine-tune the shipped U-Net so inpainting draws the named object *into the hole*.

Starts from a model folder's weights (``models/builtin``), not from a ``runs/`` checkpoint, and draws every
batch on the fly (the data set is a pure function of its seed; the shipped VAE encodes each batch, ~5% of a
step), so it needs no latent pool. A batch mixes:

- text-to-image samples from the phase 1-5 data set (mask all ones), so colour / shape / position hold, a
  share of them single objects of the weak colours and shape (``FOCUS_*`` in ``hole_data``);
- ``hole_data`` samples: a hole around an object (draw it / remove it) or over an empty area;
- the old random masks over data set pictures, so free-form inpainting keeps its footing.

The loss is phase 5's (epsilon, min-SNR-5 raised at high noise to 0.2 / SNR, capped at 15; offset noise 0.1).
The text encoder stays frozen by default (the ControlNet and other tools trained against it keep matching).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .common import (
    EMA,
    JsonLog,
    StepLoop,
    load_checkpoint,
    require,
    resume,
    save_checkpoint,
    set_threads,
    training_state,
)
from .data import COLOR_NAMES, IMAGE_SIZE, SHAPES, ShapesDataset, caption_for, is_held_out, random_mask, to_tensor_batch
from .hole_data import FOCUS_COLOR_WEIGHT, FOCUS_SHAPE_WEIGHT, POSITION_LIST, hole_sample
from .models import NUM_TRAIN_TIMESTEPS, tokenize
from .train_unet import loss_weights, make_noise_scheduler
from .train_vae import TRAIN_SEED

DATA_SEED = TRAIN_SEED + 6_000  # text-to-image scenes of the phase-6 batches (same distribution, other draws)


@dataclass
class HoleConfig:
    batch: int = 32
    lr: float = 1.5e-4
    warmup: int = 50
    ema_decay: float = 0.998
    t2i_prob: float = 0.4  # text-to-image (mask all ones)
    focus_prob: float = 0.25  # of those, a single object of a weak colour or shape
    hole_prob: float = 0.5  # hole_data samples
    # the rest: the old random masks over data set pictures
    uncond_prob: float = 0.1
    noise_offset: float = 0.1
    x0_floor: float = 0.2
    high_noise_cap: float = 15.0
    train_text_encoder: bool = False


def focus_scene(rng: np.random.Generator):
    """A data set style single object, its colour one of the weak ones (or its shape the weak one)."""
    ds_say = rng.random(3)
    while True:
        if rng.random() < 0.6:
            color = list(FOCUS_COLOR_WEIGHT)[int(rng.integers(len(FOCUS_COLOR_WEIGHT)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
        else:
            color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
            shape = list(FOCUS_SHAPE_WEIGHT)[int(rng.integers(len(FOCUS_SHAPE_WEIGHT)))]
        position = POSITION_LIST[int(rng.integers(9))]
        bg = ("white", "black", "gray")[int(rng.integers(3))] if rng.random() < 0.75 else COLOR_NAMES[int(rng.integers(12))]
        if color != bg and not is_held_out(color, shape, position):
            break
    from .data import Scene, render

    obj = ShapesDataset._place(rng, shape, color, ("small", "medium", "large")[int(rng.integers(3))], position)
    cap = caption_for((obj,), bg, bool(ds_say[0] < 0.7), bool(ds_say[1] < 0.9), bool(ds_say[2] < 0.85))
    return render(Scene(bg, (obj,), cap)), cap


def batch_items(cfg: HoleConfig, seed: int, step: int) -> list[dict]:
    """The images, masks and captions of step ``step``: a pure function of (seed, step)."""
    ds = ShapesDataset(DATA_SEED + seed)
    items = []
    for i in range(cfg.batch):
        rng = np.random.default_rng([seed, step, i, 6])
        u = rng.random()
        if u < cfg.t2i_prob:
            if rng.random() < cfg.focus_prob:
                img, cap = focus_scene(rng)
            else:
                img, cap = ds.sample(int(rng.integers(0, 2**31)))
            items.append({"source": None, "target": img, "mask": None, "caption": cap, "kind": "t2i"})
        elif u < cfg.t2i_prob + cfg.hole_prob:
            s = hole_sample(rng)
            items.append({"source": s.source, "target": s.target, "mask": s.mask, "caption": s.caption, "kind": s.kind})
        else:
            img, cap = ds.sample(int(rng.integers(0, 2**31)))
            items.append({"source": img, "target": img, "mask": random_mask(rng), "caption": cap, "kind": "random"})
    return items


def load_base(model_dir: Path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model_dir = Path(model_dir)
    require(model_dir / "unet" / "config.json", "model folder", "a diffusers folder such as models/builtin")
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet", local_files_only=True, torch_dtype=torch.float32)
    te = CLIPTextModel.from_pretrained(model_dir / "text_encoder", local_files_only=True, torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(model_dir / "vae", local_files_only=True, torch_dtype=torch.float32)
    tok = CLIPTokenizer.from_pretrained(model_dir / "tokenizer", local_files_only=True)
    return unet, te, vae, tok


@torch.no_grad()
def encode_batch(vae, items: list[dict], sf: float, blank: torch.Tensor):
    """Latents of the targets; mask (latent size, nearest, as the inpainting pipeline resizes it) and masked-image
    latents (the source with the hole zeroed, as the pipeline feeds them): all ones and the blank latent
    for text-to-image."""
    z0 = vae.encode(to_tensor_batch([it["target"] for it in items])).latent_dist.mean * sf
    B = len(items)
    hw = tuple(z0.shape[-2:])  # 16x16 for the built-in VAE
    masks = torch.ones(B, 1, *hw)
    mlat = blank.expand(B, -1, -1, -1).clone()
    k = [i for i, it in enumerate(items) if it["mask"] is not None]
    if k:
        m = torch.from_numpy(np.stack([items[i]["mask"] for i in k]))[:, None]
        x = to_tensor_batch([items[i]["source"] for i in k]) * (m < 0.5)
        mlat[k] = vae.encode(x).latent_dist.mean * sf
        masks[k] = F.interpolate(m, size=hw)
    return z0, masks, mlat


def finetune_hole(model_dir: Path, run_dir: Path, cfg: HoleConfig, seed: int = 0, time_budget_minutes: float = 50.0,
                  steps: int | None = None, checkpoint_every_s: float = 180.0, threads: int = 1,
                  progress: bool = True) -> dict:  # fmt: skip
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    set_threads(threads)
    torch.manual_seed(seed)
    t_start = time.time()
    unet, te, vae, tok = load_base(model_dir)
    sf = float(vae.config.scaling_factor)  # already holds phases 2-5's 0.4 latent scale
    vae.eval()
    blank = vae.encode(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)).latent_dist.mean.detach() * sf
    empty_ids = tokenize(tok, [""])[0]
    modules = {"unet": unet, "text_encoder": te} if cfg.train_text_encoder else {"unet": unet}
    te.requires_grad_(cfg.train_text_encoder)
    te.train(cfg.train_text_encoder)
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2, betas=(0.9, 0.99))
    ema = EMA(modules, cfg.ema_decay)
    ckpt_path = run_dir / "checkpoint.pt"
    start, trained_s = resume(load_checkpoint(ckpt_path), modules, opt, ema, "phase-6 fine-tuning")
    (run_dir / "config.json").write_text(json.dumps({**asdict(cfg), "model": str(model_dir), "seed": seed,
                                                     "scaling_factor": sf}, indent=2))  # fmt: skip
    log = JsonLog(run_dir / "log.jsonl")
    sched = make_noise_scheduler()

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, training_state(modules, opt, ema, step=step, trained_s=trained_s,
                                                  config=asdict(cfg), model=str(model_dir)))  # fmt: skip

    budget_s = time_budget_minutes * 60 if steps is None else None
    loop = StepLoop(save, start=start, steps=steps or 10**9, desc="finetune-hole", log_every=20,
                    checkpoint_every_s=checkpoint_every_s, budget_s=budget_s, started=t_start, progress=progress,
                    stop_message="stopped at step {step}")  # fmt: skip
    unet.train()
    ema_loss = None
    step = start
    for step in loop:
        t0 = time.time()
        items = batch_items(cfg, seed, step)
        z0, mask, mlat = encode_batch(vae, items, sf, blank)
        B = len(items)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        ids = tokenize(tok, [it["caption"] for it in items])
        drop = torch.rand(B, generator=g) < cfg.uncond_prob
        ids[drop] = empty_ids
        noise = torch.randn(z0.shape, generator=g) + cfg.noise_offset * torch.randn(B, 4, 1, 1, generator=g)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (B,), generator=g)
        zt = sched.add_noise(z0, noise, t)
        for gr in opt.param_groups:
            gr["lr"] = loop.lr(step, cfg.lr, cfg.warmup, trained_s)
        with torch.set_grad_enabled(cfg.train_text_encoder):
            h = te(ids).last_hidden_state
        pred = unet(torch.cat([zt, mask, mlat], dim=1), t, encoder_hidden_states=h).sample
        per = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per * loss_weights(sched, t, x0_floor=cfg.x0_floor, cap=cfg.high_noise_cap)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(modules)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        dt = time.time() - t0
        trained_s += dt
        if loop.logs(step):
            log.write(step=step, loss=round(loss.item(), 5), loss_ema=round(ema_loss, 5), lr=opt.param_groups[0]["lr"],
                      step_s=round(dt, 3))  # fmt: skip
            loop.bar.set_postfix(loss=f"{ema_loss:.4f}")
        loop.end_step(step, trained_s)
    done = step + 1
    save(done)
    result = {"steps": done, "minutes": round((time.time() - t_start) / 60, 1),
              "training_minutes": round(trained_s / 60, 1), "final_loss_ema": ema_loss}  # fmt: skip
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


def _drop_source_path(config: Path) -> None:
    """from_pretrained notes where it loaded from; the shipped config names no local path."""
    cfg = json.loads(config.read_text())
    if cfg.pop("_name_or_path", None) is not None:
        config.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def export_hole(run_dir: Path, base: Path, out: Path, use_ema: bool = True) -> Path:
    """Write the run's (EMA) U-Net, and the text encoder when it was trained, into ``out``: a copy of ``base``
    with those parts replaced (``out`` may be ``base`` itself: only unet/ and text_encoder/ are rewritten)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    run_dir, base, out = Path(run_dir), Path(base), Path(out)
    ck = load_checkpoint(require(run_dir / "checkpoint.pt", "phase-6 checkpoint", f"run finetune-hole --run-dir {run_dir}"))
    assert ck is not None
    if out.resolve() != base.resolve():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(base, out)
    weights = ck["ema"]["shadow"] if use_ema else ck
    unet = UNet2DConditionModel.from_pretrained(base / "unet", local_files_only=True, torch_dtype=torch.float32)
    unet.load_state_dict(weights["unet"])
    unet.to(torch.float16).save_pretrained(out / "unet", safe_serialization=True)
    _drop_source_path(out / "unet" / "config.json")
    if "text_encoder" in weights:
        te = CLIPTextModel.from_pretrained(base / "text_encoder", local_files_only=True, torch_dtype=torch.float32)
        te.load_state_dict(weights["text_encoder"])
        te.save_pretrained(out / "text_encoder", safe_serialization=True)
        _drop_source_path(out / "text_encoder" / "config.json")
    print(f"wrote {out} from {run_dir} (step {ck['step']}, {'EMA' if use_ema else 'raw'} weights)")
    return out


def main_finetune(args) -> None:
    cfg = HoleConfig()
    for name in ("batch", "lr", "warmup", "ema_decay"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.train_text_encoder = bool(args.train_text_encoder)
    finetune_hole(Path(args.model), Path(args.run_dir), cfg, seed=args.seed, time_budget_minutes=args.time_budget_minutes,
                  steps=args.steps, threads=args.threads)  # fmt: skip


def main_export(args) -> None:
    export_hole(Path(args.run_dir), Path(args.base), Path(args.out), use_ema=not args.no_ema)

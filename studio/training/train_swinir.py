"""The built-in SwinIR x4: a small SwinIR (spandrel's architecture, so spandrel loads the shipped file)
trained with an L1 loss on pairs of the built-in model's domain (``sr_data.SRPairs``: 256 px renders and
their bicubic 64 px downsamplings), random low-res crops.

``train-swinir`` is resumable (model, optimizer, EMA, step, training time and RNG state saved every few
minutes); the data and crops of step k are a pure function of the seed and k. ``export-swinir`` writes the
EMA weights as a float32 ``.safetensors`` state dict with exactly SwinIR's own keys.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

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
from .models import config_of
from .sr_data import SCALE, TRAIN_SEED, SRPairs, bicubic, crop_origin, heldout_pairs, import_spandrel, psnr, ssim


@dataclass
class SwinIRConfig:
    embed_dim: int = 60
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (6, 6, 6, 6)
    window_size: int = 8
    mlp_ratio: float = 2.0
    upsampler: str = "pixelshuffledirect"  # one conv + pixel shuffle (SwinIR's lightweight x4 head)
    img_size: int = 64  # the low-res size the attention masks are built for (spandrel reads it back)


@dataclass
class SwinIRPreset:
    name: str
    model: SwinIRConfig = field(default_factory=SwinIRConfig)
    batch: int = 8
    lr_patch: int = 32  # low-res crop side (high-res: 4x)
    lr: float = 5e-4
    warmup: int = 100
    steps: int = 3000
    time_budget_minutes: float | None = 35.0  # the cosine schedule follows the training time spent
    ema_decay: float = 0.995
    threads: int = 1
    # start as bilinear upsampling (see bilinear_init): flat colours exact from step 0, the body learns the rest
    init_bilinear: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


SWINIR_PRESETS: dict[str, SwinIRPreset] = {
    # 35 minutes of training on one CPU core
    "cpu": SwinIRPreset(name="cpu"),
    # seconds: the tests
    "tiny": SwinIRPreset(
        name="tiny",
        model=SwinIRConfig(embed_dim=12, depths=(1,), num_heads=(2,), mlp_ratio=1.0, img_size=16),
        batch=2, lr_patch=16, steps=4, time_budget_minutes=None, warmup=1, ema_decay=0.9,
    ),
    # SwinIR-S-like body with the classical pixel-shuffle head, for one GPU (config only: never run here)
    "gpu": SwinIRPreset(
        name="gpu",
        model=SwinIRConfig(embed_dim=96, depths=(6, 6, 6, 6), num_heads=(6, 6, 6, 6), mlp_ratio=2.0,
                           upsampler="pixelshuffle"),
        batch=32, lr_patch=48, lr=2e-4, warmup=500, steps=100_000, time_budget_minutes=None,
        ema_decay=0.999, threads=8,
    ),
}


def build_swinir(cfg: SwinIRConfig | dict):
    cfg = config_of(SwinIRConfig, cfg)
    import_spandrel()
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR

    return SwinIR(
        img_size=cfg.img_size,
        patch_size=1,
        in_chans=3,
        embed_dim=cfg.embed_dim,
        depths=list(cfg.depths),
        num_heads=list(cfg.num_heads),
        window_size=cfg.window_size,
        mlp_ratio=cfg.mlp_ratio,
        upscale=SCALE,
        img_range=1.0,  # what spandrel assumes for window sizes other than 7
        upsampler=cfg.upsampler,
        resi_connection="1conv",
        drop_path_rate=0.0,
    )


@torch.no_grad()
def bilinear_init(model, body_scale: float = 0.01) -> None:
    """Make a fresh SwinIR compute (nearly) bilinear x4 upsampling: ``conv_first`` passes the RGB through on
    its first 3 channels, the residual ``conv_after_body`` and the other channels of the head start near zero,
    and the head's 3x3 convolution holds the bilinear weights of each of the 16 output sub-pixels.
    Most of a picture of this domain is flat, where bicubic is exact: a network that starts from noise spends
    its short CPU training relearning flat colours; this one only learns what bilinear gets wrong."""
    if model.upsampler != "pixelshuffledirect":
        return
    s = model.upscale
    w = model.conv_first.weight
    w[:3] = 0.0
    for c in range(3):
        w[c, c, 1, 1] = 1.0
    model.conv_first.bias[:3] = 0.0
    model.conv_after_body.weight.mul_(body_scale)
    model.conv_after_body.bias.zero_()
    head = model.upsample[0]
    head.weight.mul_(body_scale)
    head.bias.zero_()
    for i in range(s):
        for j in range(s):
            ky = _taps((i + 0.5) / s - 0.5)
            kx = _taps((j + 0.5) / s - 0.5)
            for c in range(3):
                head.weight[c * s * s + i * s + j, :3] = 0.0
                head.weight[c * s * s + i * s + j, c] = torch.outer(ky, kx)


def _taps(d: float) -> torch.Tensor:
    """Bilinear weights of the neighbours -1, 0, +1 for a sample offset d in (-0.5, 0.5) pixels."""
    return torch.tensor([max(0.0, -d), 1.0 - abs(d), max(0.0, d)])


def _to01(imgs: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs).astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()


def batch_at(src: SRPairs, step: int, batch: int, lr_patch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res and high-res crops of step ``step`` (a pure function of seed and step). Half the crops are
    centred near an object (most of a picture is flat background, which teaches little)."""
    rng = np.random.default_rng([seed, step, 0xC80])
    lrs, hrs = [], []
    n_lr = src.hr_size // src.scale
    for j in range(batch):
        index = step * batch + j
        scene = src.ds.scene(index)
        hr, lr, _ = src.pair(index)
        x0, y0 = crop_origin(rng, scene, n_lr, lr_patch, 64.0)
        s = src.scale
        lrs.append(lr[y0 : y0 + lr_patch, x0 : x0 + lr_patch])
        hrs.append(hr[y0 * s : (y0 + lr_patch) * s, x0 * s : (x0 + lr_patch) * s])
    return _to01(lrs), _to01(hrs)


def upscale_uint8(model, lr: np.ndarray) -> np.ndarray:
    """One uint8 HxWx3 image through the model -> uint8 (4H)x(4W)x3 (spandrel's own padding inside)."""
    with torch.no_grad():
        y = model(_to01([lr]))[0].clamp(0, 1)
    return (y.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def evaluate_sr(fn, n: int = 32) -> dict:
    """Mean PSNR / SSIM of ``fn(lr_uint8) -> hr_uint8`` and of bicubic on ``n`` held-out pairs."""
    pm, sm, pb, sb = [], [], [], []
    for hr, lr, _cap in heldout_pairs(n):
        out = fn(lr)
        bic = bicubic(lr, hr.shape[0])
        pm.append(psnr(hr, out))
        sm.append(ssim(hr, out))
        pb.append(psnr(hr, bic))
        sb.append(ssim(hr, bic))
    return {"n": n, "psnr": float(np.mean(pm)), "ssim": float(np.mean(sm)),
            "bicubic_psnr": float(np.mean(pb)), "bicubic_ssim": float(np.mean(sb))}


def train_swinir(
    run_dir: Path,
    preset: SwinIRPreset,
    seed: int = 0,
    checkpoint_every_s: float = 180.0,
    max_minutes: float | None = None,
    eval_images: int = 32,
    progress: bool = True,
) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    set_threads(preset.threads)
    seed_everything(seed)
    model = build_swinir(preset.model)
    if preset.init_bilinear:
        bilinear_init(model)
    opt = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=0.0, betas=(0.9, 0.99))
    ema = EMA({"model": model}, preset.ema_decay)
    ckpt_path = run_dir / "checkpoint.pt"
    budget_s = preset.time_budget_minutes * 60 if preset.time_budget_minutes else None
    steps = preset.steps
    ck = load_checkpoint(ckpt_path)
    start, trained_s = resume(ck, {"model": model}, opt, ema, "SwinIR training")
    (run_dir / "train_config.json").write_text(json.dumps({"preset": preset.to_dict(), "seed": seed}, indent=2))
    log = JsonLog(run_dir / "log.jsonl")
    src = SRPairs(TRAIN_SEED + seed)

    def save(step: int, done: bool = False) -> None:
        save_checkpoint(ckpt_path, training_state({"model": model}, opt, ema, step=step, trained_s=trained_s,
                                                  preset=preset.to_dict(), done=done))

    # finished: done, and the budget (or step count) not raised since (a raised one continues the run)
    if ck is not None and ck.get("done") and (trained_s >= budget_s if budget_s else start >= steps):
        print("training already finished")
    else:
        model.train()
        loop = StepLoop(save, start=start, steps=steps, desc="train-swinir", log_every=25,
                        checkpoint_every_s=checkpoint_every_s, budget_s=budget_s, max_minutes=max_minutes,
                        progress=progress)
        ema_loss, step = None, start
        for step in loop:
            t0 = time.time()
            lr = loop.lr(step, preset.lr, preset.warmup, trained_s)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = batch_at(src, step, preset.batch, preset.lr_patch, seed)
            loss = (model(x) - y).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.update({"model": model})
            trained_s += time.time() - t0
            ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
            if loop.logs(step):
                log.write(step=step, loss=round(loss.item(), 5), loss_ema=round(ema_loss, 5), lr=lr,
                          trained_min=round(trained_s / 60, 2))
                loop.bar.set_postfix(loss=f"{ema_loss:.4f}")
            loop.end_step(step, trained_s)
        if loop.stopped_early:
            return {"steps": step + 1, "stopped_early": True}
        start = step + 1
        save(start, done=True)
    model.load_state_dict(ema.shadow["model"])
    model.eval()
    result = {"steps": start, "training_minutes": round(trained_s / 60, 1),
              "params": sum(p.numel() for p in model.parameters())}
    if eval_images:
        result.update(evaluate_sr(lambda lr: upscale_uint8(model, lr), n=eval_images))
    (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    log.write(**result)
    print(json.dumps(result))
    return result


def export_swinir(run_dir: str | Path, out_file: str | Path, use_ema: bool = True, fp32: bool = False) -> Path:
    """Write the run's weights as a safetensors state dict with SwinIR's own keys (float16 unless ``fp32``)."""
    from safetensors.torch import save_file

    run_dir, out_file = Path(run_dir), Path(out_file)
    ck = load_checkpoint(require(run_dir / "checkpoint.pt", "SwinIR checkpoint",
                                 f"run train-swinir --out {run_dir} first"))
    # img_size only sets the size whose shifted-window attention masks are stored (other sizes compute theirs):
    # the smallest, two windows, keeps the file small (64 px masks are 4 MB of the 6)
    cfg = dict(ck["preset"]["model"])
    cfg["img_size"] = 2 * int(cfg["window_size"])
    model = build_swinir(cfg)
    weights = ck["ema"]["shadow"]["model"] if use_ema else ck["model"]
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in weights.items() if not k.endswith("attn_mask")}, strict=False)
    assert all(k.endswith("attn_mask") for k in missing) and not unexpected, (missing, unexpected)
    # float16 weights and int32 indices by default (half the size); spandrel copies them into its float32 model
    ftype, itype = (torch.float32, torch.int64) if fp32 else (torch.float16, torch.int32)
    sd = {k: v.detach().to(ftype if v.dtype.is_floating_point else itype).contiguous()
          for k, v in model.state_dict().items()}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    meta = {"architecture": "SwinIR", "scale": str(SCALE), "training_step": str(ck["step"]),
            "config": json.dumps(ck["preset"]["model"])}
    save_file(sd, str(out_file), metadata=meta)
    return out_file


def load_swinir_file(path: str | Path):
    """Load a SwinIR file through spandrel (what the studio does): -> ImageModelDescriptor."""
    from safetensors.torch import load_file

    spandrel = import_spandrel()
    return spandrel.ModelLoader().load_from_state_dict(load_file(str(path)))


def main_train_swinir(args) -> None:
    preset = SWINIR_PRESETS[args.preset]
    for flag, name in (("batch", "batch"), ("threads", "threads"), ("lr", "lr"), ("steps", "steps")):
        if getattr(args, flag, None) is not None:
            setattr(preset, name, getattr(args, flag))
    if args.steps is not None:
        preset.time_budget_minutes = None
    if args.time_budget_minutes is not None:
        preset.time_budget_minutes = args.time_budget_minutes
    train_swinir(Path(args.out), preset, seed=args.seed, max_minutes=args.max_minutes, eval_images=args.eval_images)


def main_export_swinir(args) -> None:
    out = export_swinir(args.run_dir, args.out, use_ema=not args.no_ema, fp32=getattr(args, "fp32", False))
    desc = load_swinir_file(out)
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB): spandrel sees {desc.architecture.id} x{desc.scale}")

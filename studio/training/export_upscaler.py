"""Write the built-in latent upscaler's diffusers folder (``export-latent-upscaler``) and load one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from studio.paths import TOKENIZER_DIR

from .common import load_checkpoint, require, seed_everything
from .models import load_tokenizer
from .upscaler_models import (
    NOISE_LEVEL,
    UPSCALER_PRESETS,
    copy_start_models,
    load_upscaler_vae,
    unet_from_config,
    upscale_pipeline,
)


def export_upscaler(run_dir: str | Path, out_dir: str | Path, use_ema: bool = True, fp16: bool = True,
                    unet_copy: bool = False) -> Path:
    """Write the diffusers folder (StableDiffusionUpscalePipeline): UNet and VAE float16, text encoder float32.
    ``unet_copy``: the UNet of the pass-through start rather than the trained one (the measured better one,
    when the UNet's training cost more than the detail channel brought)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    vae = load_upscaler_vae(run_dir)
    if unet_copy:
        cfg = run_dir / "unet" / "train_config.json"
        d = json.loads(cfg.read_text())["preset"] if cfg.exists() else UPSCALER_PRESETS["cpu"].to_dict()
        seed_everything(0)  # the same files each time (the copy reads none of the random weights)
        text_encoder, unet = (m.eval() for m in copy_start_models(d["text"], d["unet"]))
        ck = {"step": 0, "trained_s": 0.0}
    else:
        ckpt = require(run_dir / "unet" / "checkpoint.pt", "upscaler UNet checkpoint",
                       f"run train-latent-upscaler --out {run_dir} first")
        ck = load_checkpoint(ckpt)
        d = ck["preset"]
        seed_everything(0)  # the text encoder is never trained (the UNet reads no text): the same files each time
        text_encoder = copy_start_models(d["text"], d["unet"])[0].eval()
        # the kept (best on validation) EMA weights, else the EMA at the end; --no-ema: the live ones at the end
        kept = load_checkpoint(run_dir / "unet" / "best.pt") if use_ema else None
        state = kept["model"] if kept else ck["ema"]["shadow"]["unet"] if use_ema else ck["unet"]
        unet = unet_from_config(ck["unet_config"], state)
    pipe = upscale_pipeline(vae, text_encoder, load_tokenizer(), unet)
    if out_dir.exists():
        for child in out_dir.iterdir():
            if child.name != "README.md":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    pipe.save_pretrained(out_dir, safe_serialization=True)
    if fp16:
        # float16 files, loaded as float32 (configs say nothing of a dtype; the text encoder's says float32):
        # a plain from_pretrained stays all-float32. The last GroupNorm and convolution of each network stay
        # float32: they carry the pass-through's shift of 16, where float16's spacing (1/64) would move every
        # output by up to a grey level.
        from safetensors.torch import load_file, save_file

        for part in ("text_encoder", "unet", "vae"):
            for f in (out_dir / part).glob("*.safetensors"):
                sd = load_file(str(f))
                save_file({k: v.half() if v.dtype.is_floating_point and not _is_head(k) else v
                           for k, v in sd.items()}, str(f), metadata={"format": "pt"})
    tok_dir = out_dir / "tokenizer"
    shutil.rmtree(tok_dir, ignore_errors=True)
    tok_dir.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(TOKENIZER_DIR / name, tok_dir / name)
    info = {"training_step": int(ck["step"]), "training_minutes": round(float(ck.get("trained_s", 0)) / 60, 1),
            "ema": use_ema and not unet_copy, "unet": "pass-through start (a copy of the condition)" if unet_copy
            else "trained",
            "weights_dtype": "float16 but the last GroupNorm and convolution of each network (float32); loaded as float32"
            if fp16 else "float32"}
    (out_dir / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    # the condition's noise level the studio uses with this model (upscale.x4_noise_level)
    (out_dir / "studio.json").write_text(json.dumps({"noise_level": NOISE_LEVEL}, indent=2) + "\n")
    return out_dir


def _is_head(key: str) -> bool:
    return ".conv_out." in f".{key}" or ".conv_norm_out." in f".{key}"


def load_upscale_pipeline(folder: str | Path, dtype=torch.float32):
    from diffusers import StableDiffusionUpscalePipeline

    pipe = StableDiffusionUpscalePipeline.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main_export_upscaler(args) -> None:
    if getattr(args, "unet_only", False):
        dest = export_unet(Path(args.run_dir), Path(args.out), fp16=not args.fp32)
        print(f"exported {dest} ({sum(p.stat().st_size for p in dest.rglob('*') if p.is_file()) / 1e6:.1f} MB)")
        return
    out = export_upscaler(args.run_dir, args.out, use_ema=not args.no_ema, fp16=not args.fp32,
                          unet_copy=getattr(args, "unet_copy", False))
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    print(f"exported {out} ({size / 1e6:.1f} MB)")


def export_unet(run_dir: Path, out_dir: Path, fp16: bool = True) -> Path:
    """Write the kept UNet (``best.pt``: the copy start when nothing beat it) into ``out_dir/unet`` alone: the
    folder's VAE, text encoder and schedulers are left as they are. float16 but the head (``export_upscaler``)."""
    from safetensors.torch import load_file, save_file

    out = Path(run_dir) / "unet"
    kept = load_checkpoint(require(out / "best.pt", "kept upscaler UNet", f"run the UNet stage into {run_dir}"))
    ck = load_checkpoint(require(out / "checkpoint.pt", "upscaler UNet checkpoint", f"run the UNet stage into {run_dir}"))
    unet = unet_from_config(ck["unet_config"], kept["model"])
    dest = Path(out_dir) / "unet"
    tmp = dest.with_name("unet.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(tmp, safe_serialization=True)
    if fp16:
        for f in tmp.glob("*.safetensors"):
            sd = load_file(str(f))
            save_file({k: v.half() if v.dtype.is_floating_point and not _is_head(k) else v for k, v in sd.items()},
                      str(f), metadata={"format": "pt"})
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    info_path = Path(out_dir) / "training_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    step = int(kept.get("step", 0))
    info.update(unet="pass-through start (a copy of the condition)" if step == 0 else "trained",
                training_step=step, ema=step > 0, training_minutes=round(float(ck.get("trained_s", 0)) / 60, 1),
                unet_run_steps=int(ck["step"]),
                unet_validation={k: kept[k] for k in ("psnr", "ssim", "score") if k in kept})
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return dest

"""Write the built-in scribble ControlNet's diffusers folder (``export-controlnet``): config.json and float16
safetensors, loadable by ``ControlNetModel.from_pretrained(folder, local_files_only=True)`` (float32 by default)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .common import load_checkpoint, require
from .train_controlnet import controlnet_from_checkpoint


def export_controlnet(run_dir: str | Path, out_dir: str | Path, use_ema: bool = True) -> Path:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    path = require(run_dir / "checkpoint.pt", "ControlNet checkpoint", f"run train-controlnet --run-dir {run_dir} first")
    ck = load_checkpoint(path)
    assert ck is not None
    net = controlnet_from_checkpoint(ck, use_ema=use_ema).to(torch.float16)
    out_dir.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(str(out_dir), safe_serialization=True)
    info = {"steps": int(ck["step"]), "training_minutes": round(float(ck.get("trained_s", 0.0)) / 60, 1),
            "ema": use_ema, "base": ck.get("base"), "preset": ck.get("preset")}
    (out_dir / "training_info.json").write_text(json.dumps(info, indent=2))
    print(f"wrote {out_dir} (step {info['steps']}, {info['training_minutes']} min of training)")
    return out_dir


def main_export_controlnet(args) -> None:
    export_controlnet(args.run_dir, args.out, use_ema=not args.no_ema)

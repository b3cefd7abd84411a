"""The latent upscaler's UNet stage: it resumes identically, keeps the checkpoint that beats the copy start by most
(fabricated validation scores), starts from the shipped folder offline and exports only the UNet into it."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.training.common import TrainingInputError
from studio.training.export_upscaler import export_unet
from studio.training.train_upscaler_unet import beats_start_by, train_upscaler_unet
from studio.training.upscaler_models import UPSCALER_PRESETS

SHIPPED = Path("models/latent-upscaler-x4")
pytestmark = pytest.mark.skipif(not (SHIPPED / "unet" / "config.json").exists(), reason="no shipped latent upscaler")


def tiny(steps: int, validate_every: int = 2):
    p = copy.deepcopy(UPSCALER_PRESETS["tiny"])
    p.unet_steps, p.unet_validate_every = steps, validate_every
    return p


class Fabricated:
    """Validation scores by step, in place of the studio's; keeps a copy of the weights it was shown."""

    def __init__(self, by_step: dict[int, tuple[float, float]]):
        self.by_step, self.seen = by_step, {}

    def __call__(self, unet, step: int = 0) -> dict:
        self.seen[step] = {k: v.clone() for k, v in unet.state_dict().items()}
        psnr, ssim = self.by_step[step]
        return {"psnr": psnr, "ssim": ssim}


def flat_scores(steps: int) -> Fabricated:
    return Fabricated({s: (37.0, 0.98) for s in range(0, steps + 1)})


def test_beats_start_by_is_the_smaller_margin():
    start = {"psnr": 37.0, "ssim": 0.980}
    assert beats_start_by({"psnr": 37.3, "ssim": 0.9802}, start) == pytest.approx(0.2)
    assert beats_start_by({"psnr": 37.5, "ssim": 0.979}, start) == pytest.approx(-1.0)  # SSIM worse
    assert beats_start_by({"psnr": 36.9, "ssim": 0.990}, start) == pytest.approx(-0.1)  # PSNR worse


def test_keeps_the_checkpoint_that_beats_the_start_by_most(tmp_path):
    scores = Fabricated({0: (37.0, 0.980),
                         2: (37.5, 0.979),    # better PSNR, worse SSIM: not a gain
                         4: (37.1, 0.9812),   # both better: 0.1
                         6: (37.3, 0.9802),   # both better: 0.2, the most
                         8: (37.05, 0.985)})  # both better: 0.05
    r = train_upscaler_unet(tmp_path / "run", tiny(8), from_model=SHIPPED, scorer=scores, progress=False)
    assert r["best_step"] == 6 and r["best"]["score"] == pytest.approx(0.2)
    kept = torch.load(tmp_path / "run" / "unet" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(kept[k], v) for k, v in scores.seen[6].items())
    assert not all(torch.equal(kept[k], v) for k, v in scores.seen[8].items())  # it did train on


def test_nothing_beats_the_start_so_the_start_ships(tmp_path):
    scores = Fabricated({0: (37.0, 0.98), 2: (36.0, 0.97), 4: (37.2, 0.9799)})
    r = train_upscaler_unet(tmp_path / "run", tiny(4), from_model=SHIPPED, scorer=scores, progress=False)
    assert r["best_step"] == 0
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    export_unet(tmp_path / "run", folder)
    from safetensors.torch import load_file

    ours = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    shipped = load_file(str(SHIPPED / "unet" / "diffusion_pytorch_model.safetensors"))
    assert ours.keys() == shipped.keys()
    assert all(torch.equal(ours[k], shipped[k]) for k in shipped)  # the copy start, as it shipped


def test_resumes_identically(tmp_path):
    straight = train_upscaler_unet(tmp_path / "a", tiny(4), from_model=SHIPPED, scorer=flat_scores(4),
                                   progress=False, eval_images=0)
    assert straight["steps"] == 4
    cut = train_upscaler_unet(tmp_path / "b", tiny(4), from_model=SHIPPED, scorer=flat_scores(4), progress=False,
                              eval_images=0, stop_at_step=2)
    assert cut == {"steps": 2, "stopped_early": True}
    ck = torch.load(tmp_path / "b" / "unet" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 2 and not ck["done"]
    train_upscaler_unet(tmp_path / "b", tiny(4), from_model=SHIPPED, scorer=flat_scores(4), progress=False,
                        eval_images=0)
    a = torch.load(tmp_path / "a" / "unet" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "unet" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4 and b["done"]
    for k, v in a["unet"].items():
        assert torch.equal(v, b["unet"][k]), k
    for k, v in a["ema"]["shadow"]["unet"].items():
        assert torch.equal(v, b["ema"]["shadow"]["unet"][k]), k
    start = torch.load(tmp_path / "a" / "unet" / "best.pt", weights_only=True)["model"]  # flat scores: the start
    assert not all(torch.equal(start[k], v) for k, v in a["unet"].items())  # the 4 steps changed the weights
    # the last convolution's columns that read the pass-through (shifted by 16) are held; the others learn
    shifted = (start["conv_norm_out.bias"] - 16.0).abs() < 1.0
    w0, w1 = start["conv_out.weight"], a["unet"]["conv_out.weight"]
    assert shifted.sum() == 3 and torch.equal(w0[:, shifted], w1[:, shifted])
    assert not torch.equal(w0[:, ~shifted], w1[:, ~shifted])


def test_starts_from_the_shipped_folder_offline_and_exports_a_loadable_unet(tmp_path, monkeypatch):
    from studio.training.evaluate_upscaler import upscale_with_pipeline
    from studio.training.export_upscaler import load_upscale_pipeline
    from studio.training.sr_data import heldout_pairs

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scores = Fabricated({0: (37.0, 0.98), 2: (37.1, 0.981)})
    r = train_upscaler_unet(tmp_path / "run", tiny(2), from_model=SHIPPED, scorer=scores, progress=False)
    assert r["best_step"] == 2
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    vae_before = (folder / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    export_unet(tmp_path / "run", folder)
    assert (folder / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == vae_before  # the VAE untouched
    pipe = load_upscale_pipeline(folder)
    kept = torch.load(tmp_path / "run" / "unet" / "best.pt", weights_only=True)["model"]
    w = "conv_in.weight"
    assert torch.allclose(pipe.unet.state_dict()[w], kept[w].half().float())  # float16 on disk
    out = upscale_with_pipeline(pipe, heldout_pairs(1)[0][1][:16, :16], steps=1)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_a_missing_folder_is_one_clear_line(tmp_path):
    with pytest.raises(TrainingInputError, match="latent upscaler vae not found"):
        train_upscaler_unet(tmp_path / "run", tiny(2), from_model=tmp_path / "nowhere", scorer=flat_scores(2),
                            progress=False)

"""Few-step models end to end on tiny random pipelines: an LCM-LoRA (every U-Net linear and conv, as diffusers' LCM
distillation trains it) run through the engine equals plain diffusers with the same LoRA; an LCM-distilled U-Net
(time_cond_proj_dim: CFG goes in as a guidance embedding, no second pass) equals diffusers'
LatentConsistencyModelPipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from studio.core import GenerateRequest
from studio.core.fewstep import detect_file

SIZE = 32
PROMPT = "a red circle"


def req(model: str, **kw) -> GenerateRequest:
    base = dict(prompt=PROMPT, model=model, steps=4, seed=1234, width=SIZE, height=SIZE, cfg=1.5, sampler="LCM")
    base.update(kw)
    return GenerateRequest.from_fields(**base)


def _plain(path: str):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        path, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _np(images) -> np.ndarray:
    return (images[0] * 255).round().astype(np.uint8)


def _lcm_lora(unet, path: Path, rank: int = 4, scale: float = 0.05) -> Path:
    """A kohya-format LoRA on the LCM distillation script's targets: attention and feed-forward linears, resnet
    convs and time-embedding projections, down/up-sampler convs."""
    g = torch.Generator().manual_seed(7)
    targets = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
               "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")  # fmt: skip
    sd: dict[str, torch.Tensor] = {}
    for name, m in unet.named_modules():
        if not name.endswith(targets) or not isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            continue
        k = "lora_unet_" + name.replace(".", "_")
        if isinstance(m, torch.nn.Linear):
            down, up = (rank, m.in_features), (m.out_features, rank)
        else:
            down, up = (rank, m.in_channels, *m.kernel_size), (m.out_channels, rank, 1, 1)
        sd[k + ".lora_down.weight"] = torch.randn(down, generator=g) * scale
        sd[k + ".lora_up.weight"] = torch.randn(up, generator=g) * scale
        sd[k + ".alpha"] = torch.tensor(float(rank))
    assert any("time_emb_proj" in k for k in sd) and any("downsamplers" in k for k in sd)
    save_file(sd, str(path))
    return path


def test_lcm_lora_end_to_end_equals_plain_diffusers(tiny_model, tmp_path):
    from diffusers import LCMScheduler

    from studio.engine.engine import Engine

    (tmp_path / "Lora").mkdir()
    plain = _plain(tiny_model)
    lora = _lcm_lora(plain.unet, tmp_path / "Lora" / "pytorch_lora_weights.safetensors")
    found = detect_file(lora)  # a name that says nothing: the layers say LCM-LoRA
    assert found is not None and found.preset.fields() == {"sampler": "LCM", "schedule": "Normal", "steps": 4,
                                                           "cfg": 1.5}  # fmt: skip

    engine = Engine(device="cpu", model_folders=[tmp_path])
    ours = engine.generate(req(tiny_model, prompt=f"{PROMPT} <lora:pytorch_lora_weights:1>"))
    without = engine.generate(req(tiny_model))
    assert "Lora hashes" in ours.extra_params and ours.steps_done == 4

    plain.scheduler = LCMScheduler.from_config(plain.scheduler.config)
    args = dict(num_inference_steps=4, guidance_scale=1.5, width=SIZE, height=SIZE, output_type="np")
    plain.load_lora_weights(str(lora))
    theirs = _np(plain(PROMPT, generator=torch.Generator().manual_seed(1234), **args).images)
    plain.unload_lora_weights()
    bare = _np(plain(PROMPT, generator=torch.Generator().manual_seed(1234), **args).images)

    assert np.abs(ours.images[0].astype(int) - theirs.astype(int)).max() <= 1
    assert np.abs(without.images[0].astype(int) - bare.astype(int)).max() <= 1
    assert np.abs(ours.images[0].astype(int) - without.images[0].astype(int)).max() > 1  # the LoRA was applied


@pytest.fixture(scope="module")
def lcm_model(tiny_model, tmp_path_factory) -> str:
    """The tiny pipeline with an LCM-distilled U-Net: time_cond_proj_dim set, its guidance projection random."""
    import shutil

    from diffusers import UNet2DConditionModel

    path = tmp_path_factory.mktemp("models") / "tiny-distilled"  # a name that says nothing
    shutil.copytree(tiny_model, path)
    base = UNet2DConditionModel.from_pretrained(Path(tiny_model) / "unet")
    torch.manual_seed(3)
    unet = UNet2DConditionModel.from_config({**base.config, "time_cond_proj_dim": 32})
    missing, unexpected = unet.load_state_dict(base.state_dict(), strict=False)
    assert all("cond_proj" in k for k in missing) and missing and not unexpected
    with torch.no_grad():
        unet.time_embedding.cond_proj.weight.mul_(20)  # a guidance embedding strong enough to see in 32 px
    shutil.rmtree(path / "unet")
    unet.save_pretrained(path / "unet")
    return str(path)


def test_lcm_distilled_unet_equals_latent_consistency_pipeline(engine, lcm_model):
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    found = detect_file(lcm_model)
    assert found is not None and found.preset.name == "LCM" and "guidance embedding" in found.reason
    assert json.loads((Path(lcm_model) / "unet" / "config.json").read_text())["time_cond_proj_dim"] == 32

    seen = []
    ours = engine.generate(req(lcm_model, cfg=8.0), on_step=seen.append)
    assert [s.step for s in seen] == [1, 2, 3, 4]
    plain = _plain(lcm_model)
    lcm = LatentConsistencyModelPipeline(
        vae=plain.vae, text_encoder=plain.text_encoder, tokenizer=plain.tokenizer, unet=plain.unet,
        scheduler=LCMScheduler.from_config(plain.scheduler.config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    lcm.set_progress_bar_config(disable=True)

    def theirs(cfg: float) -> np.ndarray:
        out = lcm(PROMPT, num_inference_steps=4, guidance_scale=cfg, width=SIZE, height=SIZE, output_type="np",
                  generator=torch.Generator().manual_seed(1234))  # fmt: skip
        return _np(out.images)

    assert np.abs(ours.images[0].astype(int) - theirs(8.0).astype(int)).max() <= 1
    assert ours.images[0].std() > 1
    # CFG reaches the U-Net through the embedding: another scale, another image (and still diffusers').
    low = engine.generate(req(lcm_model, cfg=2.0))
    assert np.abs(low.images[0].astype(int) - theirs(2.0).astype(int)).max() <= 1
    assert np.abs(low.images[0].astype(int) - ours.images[0].astype(int)).max() > 1

"""Adversarial retraining of the x4 latent upscaler's VAE decoder: the tiny run resumes identically, keeps the
encoder (so the structured latent), and installs in the folder's storage format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "latent-upscaler-x4"
pytestmark = [pytest.mark.skipif(not (SHIPPED / "vae" / "config.json").exists(), reason="no shipped latent upscaler"),
              pytest.mark.usefixtures("one_torch_thread")]


def _states(ck: dict) -> dict:
    return {f"{part}.{k}": v for part in ("vae", "disc") for k, v in ck[part].items()}


def test_tiny_run_resumes_identically_keeps_the_encoder_and_installs(tmp_path):
    from safetensors.torch import load_file

    from studio.training.cli import main
    from studio.training.common import TrainingInputError, load_checkpoint
    from studio.training.train_upscaler_vae_gan import PRESETS, export, train

    preset = PRESETS["tiny"]
    whole = train(SHIPPED, tmp_path / "whole", preset, eval_images=1, progress=False)
    assert whole["steps"] == preset.steps and {"heldout_before", "heldout_after", "best"} <= set(whole)
    rows = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    weights = {r["step"]: r["d_weight"] for r in rows if "d_weight" in r}
    assert all(weights[s] == 0.0 for s in range(preset.disc_start))  # the warm-up: reconstruction alone
    assert all(weights[s] > 0.0 for s in range(preset.disc_start, preset.steps))
    assert [r["step"] for r in rows if "validation" in r] == [0, 3, 6]

    run = tmp_path / "broken"
    part = train(SHIPPED, run, preset, stop_after=3, eval_images=0, progress=False)
    assert part["steps"] == 3 and load_checkpoint(run / "checkpoint.pt")["step"] == 3
    with pytest.raises(TrainingInputError, match="--resume"):
        train(SHIPPED, run, preset, eval_images=0, progress=False)
    main(["train-upscaler-vae-gan", "--preset", "tiny", "--model", str(SHIPPED), "--run-dir", str(run), "--resume",
          "--eval-images", "0"])
    a, b = load_checkpoint(tmp_path / "whole" / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    assert a["step"] == b["step"] == preset.steps
    sa, sb = _states(a), _states(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # continued identically
    assert torch.equal(a["d_optimizer"]["state"][0]["exp_avg"], b["d_optimizer"]["state"][0]["exp_avg"])
    shipped = load_file(str(SHIPPED / "vae" / "diffusion_pytorch_model.safetensors"))
    enc = [k for k in shipped if k.startswith(("encoder.", "quant_conv."))]
    dec = [k for k in shipped if k.startswith(("decoder.", "post_quant_conv."))]
    # the encoder frozen: the structured latent, and the UNet trained on it, stay valid; the decoder learnt
    assert enc and all(torch.equal(shipped[k].float(), b["vae"][k]) for k in enc)
    assert not all(torch.equal(shipped[k].float(), b["vae"][k]) for k in dec)

    # the install: the last checkpoint into a copy of the folder, float16 but the fp32 heads, the config kept
    model = tmp_path / "model"
    shutil.copytree(SHIPPED, model)
    main(["export-upscaler-vae-gan", "--run-dir", str(run), "--model", str(model), "--last"])
    new = load_file(str(model / "vae" / "diffusion_pytorch_model.safetensors"))
    assert new.keys() == shipped.keys()
    assert all(new[k].dtype == shipped[k].dtype for k in shipped)  # the folder's storage format
    assert new["decoder.conv_out.weight"].dtype == torch.float32 and new["decoder.up_blocks.0.resnets.0.conv1.weight"].dtype == torch.float16
    assert all(torch.equal(new[k], b["vae"][k].to(new[k].dtype)) for k in new)
    assert json.loads((model / "vae" / "config.json").read_text()) == json.loads((SHIPPED / "vae" / "config.json").read_text())
    assert "adversarially" in json.loads((model / "training_info.json").read_text())["vae"]

    # a folder whose encoder is another: refused in one line, the folder untouched
    other = tmp_path / "other"
    shutil.copytree(SHIPPED, other)
    sd = load_file(str(other / "vae" / "diffusion_pytorch_model.safetensors"))
    sd["encoder.conv_in.bias"] = sd["encoder.conv_in.bias"] + 1
    from safetensors.torch import save_file

    save_file(sd, str(other / "vae" / "diffusion_pytorch_model.safetensors"))
    before = (other / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    # (a TrainingInputError: the CLI prints it as one line, exit status 2)
    with pytest.raises(TrainingInputError, match="encoder is not the one") as e:
        export(run, other)
    assert "\n" not in str(e.value)
    assert (other / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == before

"""Few-step presets and their detection from names, safetensors metadata and keys (tiny files written here), the
CLI's --preset, and A1111 metadata of few-step runs read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from studio.cli import main
from studio.core.errors import RequestError
from studio.core.fewstep import PRESETS, detect_file, detect_text, resolve_preset, suggest
from studio.core.metadata import read_parameters, request_fields
from studio.core.samplers import scheduler_spec


def _st(path: Path, keys: list[str], metadata: dict[str, str] | None = None) -> str:
    save_file({k: np.zeros((2, 2), np.float32) for k in keys}, str(path), metadata=metadata)
    return str(path)


PLAIN_CKPT = ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight"]
STYLE_LORA = ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
              "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
              "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"]  # fmt: skip
# The LCM distillation script's LoRA targets: resnets' time-embedding projections and sampler convs, no text encoder.
LCM_LORA = ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
            "lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight",
            "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight",
            "lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight"]  # fmt: skip
LCM_LORA_PEFT = ["unet.down_blocks.0.resnets.0.time_emb_proj.lora_A.weight",
                 "unet.up_blocks.0.upsamplers.0.conv.lora_B.weight"]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "preset", "steps"),
    [("lcm-lora-sdv1-5", "LCM", 4), ("LCM_Dreamshaper_v7", "LCM", 4), ("sd_xl_turbo_1.0_fp16", "SD Turbo", 1),
     ("dreamshaperXLTurbo", "SD Turbo", 1), ("sdxl_lightning_2step_lora", "Lightning 2-step", 2),
     ("sdxl_lightning_8step", "Lightning 8-step", 8), ("Hyper-SD15-8steps-lora", "Hyper-SD", 8),
     ("Hyper-SDXL-1step-lora", "Hyper-SD 1-step (TCD)", 1), ("juggernautXL_hyper", "Hyper-SD", 8),
     ("TCD-SD15-LoRA", "TCD", 4)],
)  # fmt: skip
def test_names_say_which_preset(name, preset, steps):
    found = detect_text(name)
    assert found is not None and (found.name, found.steps) == (preset, steps)
    scheduler_spec(found.sampler, found.schedule)  # every preset is a valid sampler + schedule


@pytest.mark.parametrize("name", ["v1-5-pruned-emaonly", "hyperrealism_v3", "talcum", "deliberate_v2", "tcdx"])
def test_ordinary_names_say_nothing(name):
    assert detect_text(name) is None


def test_presets_set_the_published_settings_and_resolve_by_any_spelling():
    assert PRESETS["LCM"].fields() == {"sampler": "LCM", "schedule": "Normal", "steps": 4, "cfg": 1.5}
    assert PRESETS["LCM"].label == "LCM: 4 steps, CFG 1.5"
    assert PRESETS["SD Turbo"].fields() == {"sampler": "Euler a", "schedule": "SGM Uniform", "steps": 1, "cfg": 1.0}
    assert PRESETS["SD Turbo"].label == "SD Turbo: 1 step, CFG 1"
    assert PRESETS["Lightning 4-step"].fields() == {"sampler": "Euler", "schedule": "SGM Uniform", "steps": 4,
                                                    "cfg": 1.0}  # fmt: skip
    assert (PRESETS["Hyper-SD"].sampler, PRESETS["Hyper-SD"].schedule) == ("DDIM", "SGM Uniform")
    assert PRESETS["TCD"].sampler == "TCD"
    for spelling, name in (("lcm", "LCM"), ("sd-turbo", "SD Turbo"), ("turbo", "SD Turbo"),
                           ("lightning-8-step", "Lightning 8-step"), ("HYPER-SD", "Hyper-SD"), ("tcd", "TCD")):
        assert resolve_preset(spelling).name == name  # fmt: skip
    with pytest.raises(RequestError, match="Unknown preset 'fastest'. Known presets: LCM, SD Turbo"):
        resolve_preset("fastest")


def test_detection_from_the_safetensors_metadata(tmp_path):
    f = _st(tmp_path / "model.safetensors", PLAIN_CKPT, {"modelspec.title": "SDXL Lightning 4-step"})
    found = detect_file(f)
    assert found is not None and found.preset.name == "Lightning 4-step" and "modelspec.title" in found.reason
    f = _st(tmp_path / "my_lora.safetensors", STYLE_LORA, {"ss_output_name": "hyper_sd15_8step"})
    assert detect_file(f).preset.name == "Hyper-SD"
    f = _st(tmp_path / "plain.safetensors", PLAIN_CKPT, {"modelspec.title": "Stable Diffusion v1.5", "x": "turbo"})
    assert detect_file(f) is None  # only the keys that say what the file is


def test_detection_from_the_keys(tmp_path):
    found = detect_file(_st(tmp_path / "pytorch_lora_weights.safetensors", LCM_LORA))
    assert found is not None and found.preset.name == "LCM" and "LCM-LoRA" in found.reason
    assert detect_file(_st(tmp_path / "adapter.safetensors", LCM_LORA_PEFT)).preset.name == "LCM"
    assert detect_file(_st(tmp_path / "style.safetensors", STYLE_LORA)) is None
    ckpt = _st(tmp_path / "distilled.safetensors", [*PLAIN_CKPT, "model.diffusion_model.time_embed.cond_proj.weight"])
    assert detect_file(ckpt).preset.name == "LCM"
    assert detect_file(_st(tmp_path / "plain.safetensors", PLAIN_CKPT)) is None


def test_detection_never_fails_and_reads_no_pickle(tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert detect_file(tmp_path / "broken.safetensors") is None
    assert detect_file(tmp_path / "missing.safetensors") is None
    (tmp_path / "x.ckpt").write_bytes(b"not a zip")  # never opened: a pickle is judged by its name only
    assert detect_file(tmp_path / "x.ckpt") is None
    (tmp_path / "lcm_x.ckpt").write_bytes(b"not a zip")
    assert detect_file(tmp_path / "lcm_x.ckpt").preset.name == "LCM"


def test_detection_from_a_diffusers_folder(tmp_path):
    lcm = tmp_path / "distilled"
    (lcm / "unet").mkdir(parents=True)
    (lcm / "unet" / "config.json").write_text(json.dumps({"time_cond_proj_dim": 256}))
    assert detect_file(lcm).preset.name == "LCM"
    tcd = tmp_path / "other"
    (tcd / "scheduler").mkdir(parents=True)
    (tcd / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "TCDScheduler"}))
    assert detect_file(tcd).preset.name == "TCD"
    plain = tmp_path / "plain"
    (plain / "scheduler").mkdir(parents=True)
    (plain / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "PNDMScheduler"}))
    assert detect_file(plain) is None


def test_suggest_prefers_the_prompts_loras_then_the_model(tmp_path):
    lcm = _st(tmp_path / "mystery.safetensors", LCM_LORA)
    turbo = _st(tmp_path / "sd_turbo.safetensors", PLAIN_CKPT)
    files = {"mystery": lcm}
    assert suggest(turbo, "a cat <lora:mystery:1>", files.get).preset.name == "LCM"
    assert suggest(turbo, "a cat <lora:mystery:0>", files.get).preset.name == "SD Turbo"  # weight 0: not used
    assert suggest("", "a cat <lora:lcm-lora-sdv1-5:1>", files.get).preset.name == "LCM"  # not found: its name
    assert suggest("", "a cat <lora:ink:1>", files.get) is None
    assert suggest("", "a cat", files.get) is None


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_preset_sets_the_fields_and_options_beside_it_win(capsys, tiny_model, tmp_path):
    code, out, err = run(capsys, "generate", "--model", tiny_model, "--prompt", "x", "--preset", "lcm", "--steps", "2",
                         "--seed", "3", "--width", "32", "--height", "32", "--out", str(tmp_path), "-q")  # fmt: skip
    assert code == 0, err
    f = request_fields(read_parameters(Path(out.strip())))
    assert (f["sampler"], f["schedule"], f["steps"], f["cfg"]) == ("LCM", "Normal", 2, 1.5)
    code, out, err = run(capsys, "generate", "--model", tiny_model, "--prompt", "x", "--preset", "SD Turbo",
                         "--seed", "3", "--width", "32", "--height", "32", "--out", str(tmp_path / "b"), "-q")  # fmt: skip
    assert code == 0, err
    f = request_fields(read_parameters(Path(out.strip())))
    assert (f["sampler"], f["schedule"], f["steps"], f["cfg"]) == ("Euler a", "SGM Uniform", 1, 1.0)
    assert np.asarray(Image.open(Path(out.strip()))).std() > 1


def test_cli_preset_errors_and_help(capsys, tiny_model):
    code, out, err = run(capsys, "generate", "--model", tiny_model, "--prompt", "x", "--preset", "fastest")
    assert code == 2 and out == "" and "Unknown preset 'fastest'" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--preset NAME" in out and "LCM: 4 steps, CFG 1.5" in out and "SD Turbo: 1 step, CFG 1" in out


@pytest.mark.parametrize(
    ("line", "sampler", "schedule"),
    [("Steps: 4, Sampler: LCM, Schedule type: SGM Uniform, CFG scale: 1.5, Seed: 1", "LCM", "SGM Uniform"),
     ("Steps: 4, Sampler: TCD, CFG scale: 1, Seed: 1", "TCD", "Normal"),
     ("Steps: 4, Sampler: Euler SGM Uniform, CFG scale: 1, Seed: 1", "Euler", "SGM Uniform"),
     ("Steps: 1, Sampler: Euler a, Schedule type: SGM Uniform, CFG scale: 1, Seed: 1", "Euler a", "SGM Uniform")],
)  # fmt: skip
def test_a1111_few_step_metadata_reads_back(line, sampler, schedule):
    f = request_fields(f"a cat\n{line}")
    assert (f["sampler"], f["schedule"]) == (sampler, schedule)
    scheduler_spec(f["sampler"], f["schedule"])  # and runs

"""The studio's requests as ComfyUI API-format graphs, checked against a real server's recorded `/object_info`.

tests/data/comfyui/object_info-0.27.json is ComfyUI 0.27's own answer for the core nodes (its LoraLoader list is
empty and its VAELoader has only "pixel_space", which is no VAE file and never offered: the tests that need LoRA and VAE files add names to a copy).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from studio.backends.base import UnsupportedError
from studio.backends.comfyui.graphs import (
    REQUIRED_NODES,
    SAMPLERS,
    SCHEDULES,
    GraphError,
    ObjectInfo,
    build_graph,
    comfy_names,
    describe_errors,
    find_nodes,
    output_node,
    pick,
    studio_names,
    studio_samplers,
    studio_schedules,
    validate,
)
from studio.core.errors import RequestError
from studio.core.requests import GenerateRequest
from studio.core.samplers import SAMPLER_NAMES, SCHEDULE_NAMES

DATA = Path(__file__).parent / "data" / "comfyui" / "object_info-0.27.json"
CKPT = "tiny-sd15.safetensors"
LORAS = ["styles/ink.safetensors", "detail-tweaker.safetensors", "Film Grain.pt"]
VAES = ["pixel_space", "vae-ft-mse-840000.safetensors"]


@pytest.fixture(scope="module")
def raw() -> dict:
    return json.loads(DATA.read_text(encoding="utf-8"))


def with_files(raw: dict) -> ObjectInfo:
    """The recorded server, with some LoRA and VAE files (the recorded one had none)."""
    data = copy.deepcopy(raw)
    data["LoraLoader"]["input"]["required"]["lora_name"][0] = list(LORAS)
    data["VAELoader"]["input"]["required"]["vae_name"][0] = list(VAES)
    return ObjectInfo(data)


@pytest.fixture
def info(raw) -> ObjectInfo:
    return with_files(raw)


@pytest.fixture
def recorded(raw) -> ObjectInfo:
    return ObjectInfo(copy.deepcopy(raw))


def image(w: int = 64, h: int = 48) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


def mask(w: int = 64, h: int = 48) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[10:20, 10:20] = 255
    return m


def nodes(graph: dict, cls: str) -> list[dict]:
    return [graph[i] for i in find_nodes(graph, cls)]


def one(graph: dict, cls: str) -> dict:
    found = nodes(graph, cls)
    assert len(found) == 1, f"{len(found)} {cls} nodes in {graph}"
    return found[0]


def source(graph: dict, link) -> dict:
    assert isinstance(link, list) and len(link) == 2, link
    return graph[link[0]]


def classes(graph: dict) -> list[str]:
    return [graph[i]["class_type"] for i in sorted(graph, key=int)]


# -- ObjectInfo -------------------------------------------------------------------------------------------------
def test_object_info_reads_the_recorded_answer(recorded):
    assert recorded.has("KSampler") and not recorded.has("NoSuchNode")
    required, optional = recorded.inputs("KSampler")
    assert list(required) == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                              "latent_image", "denoise"]  # fmt: skip
    assert optional == {}
    assert recorded.default("KSampler", "cfg") == 8.0
    assert recorded.default("SaveImage", "filename_prefix") == "ComfyUI"
    assert recorded.default("ImageScale", "crop") == "disabled"  # a combo without a default: its first choice
    assert recorded.default("KSampler", "model") is None
    assert recorded.outputs("CheckpointLoaderSimple") == ["MODEL", "CLIP", "VAE"]
    assert recorded.missing(["KSampler", "Foo", "LoadImage", "Foo", "Bar"]) == ["Foo", "Bar"]
    assert recorded.checkpoints == [CKPT]
    assert recorded.loras == []
    assert recorded.vaes == []  # "pixel_space" (VAELoader's entry for pixel-space models) is no VAE
    with pytest.raises(KeyError):
        recorded.inputs("NoSuchNode")


def test_both_combo_formats(recorded):
    # [[choices], {...}] (LoadImage, KSampler) and ["COMBO", {"options": [...]}] (UpscaleModelLoader) on 0.27
    assert isinstance(recorded.data["LoadImage"]["input"]["required"]["image"][0], list)
    assert recorded.data["UpscaleModelLoader"]["input"]["required"]["model_name"][0] == "COMBO"
    assert recorded.combo("LoadImage", "image") == ["init.png"]
    assert recorded.upscalers == ["tiny-compact-x2.safetensors"]
    assert recorded.default("UpscaleModelLoader", "model_name") == "tiny-compact-x2.safetensors"
    assert recorded.combo("KSampler", "steps") == []  # not a combo
    assert recorded.combo("NoSuchNode", "x") == [] and recorded.combo("KSampler", "nothing") == []
    both = ObjectInfo({
        "Old": {"input": {"required": {"c": [["a", "b"], {}]}}, "output": []},
        "New": {"input": {"required": {"c": ["COMBO", {"options": ["a", "b"], "default": "b"}]}}, "output": []},
        "Bare": {"input": {"required": {"c": [["a", "b"]]}}, "output": []},
    })  # fmt: skip
    assert both.combo("Old", "c") == both.combo("New", "c") == both.combo("Bare", "c") == ["a", "b"]
    assert both.default("Old", "c") == "a" and both.default("New", "c") == "b"


def test_the_recorded_server_has_every_required_node(recorded):
    assert recorded.missing(REQUIRED_NODES) == []
    assert "SaveImageWebsocket" not in REQUIRED_NODES  # not a core node: the "save" output does without it
    assert recorded.has("SaveImageWebsocket")


# -- names ------------------------------------------------------------------------------------------------------
def test_sampler_table_against_the_servers_combo(recorded):
    have = recorded.sampler_names
    assert len(have) == 44
    for ours, theirs in SAMPLERS.items():
        assert ours in SAMPLER_NAMES, ours
        assert theirs in have, theirs
    assert set(SAMPLER_NAMES) - set(SAMPLERS) == {"PLMS", "TCD"}  # TCD is a custom-sampler node, not a KSampler name
    assert "tcd" not in have
    assert set(SCHEDULES) == set(SCHEDULE_NAMES)
    assert all(s in recorded.scheduler_names for s in SCHEDULES.values())
    assert SCHEDULES == {"Normal": "normal", "Karras": "karras", "Exponential": "exponential",
                         "SGM Uniform": "sgm_uniform"}  # fmt: skip
    assert studio_samplers(recorded) == tuple(n for n in SAMPLER_NAMES if n not in ("PLMS", "TCD"))
    assert studio_schedules(recorded) == SCHEDULE_NAMES


def test_comfy_names(recorded):
    assert comfy_names("DPM++ 2M", "Karras", recorded) == ("dpmpp_2m", "karras")
    assert comfy_names("Euler a", "Normal", recorded) == ("euler_ancestral", "normal")
    assert comfy_names("k_euler_a", "sgm uniform", recorded) == ("euler_ancestral", "sgm_uniform")  # aliases, case
    assert comfy_names("DDIM", "", recorded) == ("ddim", "normal")
    assert comfy_names("dpmpp_2m_sde_gpu", "beta", recorded) == ("dpmpp_2m_sde_gpu", "beta")  # the server's own


def test_studio_names_write_a1111s_names_for_the_servers_own():
    assert studio_names("dpmpp_2m", "karras") == ("DPM++ 2M", "Karras")
    assert studio_names("dpmpp_2m_sde_gpu", "sgm_uniform") == ("DPM++ 2M SDE", "SGM Uniform")  # its noise variant
    assert studio_names("k_euler_a", "sgm uniform") == ("Euler a", "SGM Uniform")  # aliases
    assert studio_names("Euler a", "Normal") == ("Euler a", "Normal")
    assert studio_names("res_multistep", "beta") == ("res_multistep", "beta")  # no A1111 twin: as the server ran it


def test_a_sampler_the_server_lacks_is_named(recorded):
    with pytest.raises(RequestError) as e:
        comfy_names("PLMS", "Normal", recorded)
    text = str(e.value)
    assert text.startswith("The ComfyUI server has no sampler PLMS (it has: Euler, Euler a, ")
    assert "\n" not in text and "PLMS" not in text.split("(it has:")[1]
    with pytest.raises(RequestError, match="Unknown sampler 'Wobbly'"):
        comfy_names("Wobbly", "Normal", recorded)
    data = copy.deepcopy(recorded.data)
    data["KSampler"]["input"]["required"]["sampler_name"][0].remove("uni_pc")
    data["KSampler"]["input"]["required"]["scheduler"][0].remove("exponential")
    older = ObjectInfo(data)
    assert "UniPC" not in studio_samplers(older) and "Exponential" not in studio_schedules(older)
    with pytest.raises(RequestError, match=r"no sampler UniPC \(it has: Euler"):
        comfy_names("UniPC", "Normal", older)
    with pytest.raises(RequestError, match=r"no Exponential schedule \(it has: Normal, Karras, SGM Uniform\)"):
        comfy_names("Euler", "Exponential", older)


def test_pick():
    names = ["styles/ink.safetensors", "detail-tweaker.safetensors", "Film Grain.pt", "sub\\win.safetensors"]
    assert pick(names, "detail-tweaker.safetensors", "LoRA") == "detail-tweaker.safetensors"  # exact
    assert pick(names, "ink", "LoRA") == "styles/ink.safetensors"  # by stem
    assert pick(names, "INK", "LoRA") == "styles/ink.safetensors"  # case-insensitively
    assert pick(names, "styles/ink", "LoRA") == "styles/ink.safetensors"  # by path, no extension
    assert pick(names, "styles\\ink.safetensors", "LoRA") == "styles/ink.safetensors"
    assert pick(names, "film grain", "LoRA") == "Film Grain.pt"
    assert pick(names, "sub/win.safetensors", "LoRA") == "sub\\win.safetensors"  # a Windows server's names
    assert pick(names, "/home/me/loras/ink.safetensors", "LoRA") == "styles/ink.safetensors"  # a local path
    with pytest.raises(RequestError) as e:
        pick(names, "nope", "LoRA")
    assert str(e.value) == ("The ComfyUI server has no LoRA 'nope' (it has: styles/ink.safetensors, "
                            "detail-tweaker.safetensors, Film Grain.pt, sub\\win.safetensors)")  # fmt: skip
    many = [f"m{i}.safetensors" for i in range(20)]
    with pytest.raises(RequestError, match=r"no upscaler 'x' \(it has: m0.safetensors, .*\(20 in all\)\)"):
        pick(many, "x", "upscaler")
    with pytest.raises(RequestError, match=r"no VAE 'x' \(it has: none\)"):
        pick([], "x", "VAE")
    with pytest.raises(RequestError, match="matches several files"):
        pick(["a/ink.safetensors", "b/ink.safetensors"], "ink", "LoRA")
    assert pick(["a/Ink.safetensors", "b/ink.safetensors"], "ink", "LoRA") == "b/ink.safetensors"


# -- graphs -----------------------------------------------------------------------------------------------------
def test_txt2img_graph(info):
    r = GenerateRequest.from_fields(prompt="a (red:1.2) cat", negative_prompt="blurry", sampler="DPM++ 2M", schedule="Karras",
                        steps=12, cfg=5.5, seed=1234, width=640, height=384, batch=3)  # fmt: skip
    g = build_graph(r, info, checkpoint=CKPT)
    validate(g, info)
    json.loads(json.dumps(g))  # plain JSON
    assert all(isinstance(k, str) for k in g)
    assert classes(g) == ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
                          "KSampler", "VAEDecode", "SaveImageWebsocket"]  # fmt: skip
    ks = one(g, "KSampler")["inputs"]
    assert (ks["seed"], ks["steps"], ks["cfg"], ks["denoise"]) == (1234, 12, 5.5, 1.0)
    assert (ks["sampler_name"], ks["scheduler"]) == ("dpmpp_2m", "karras")
    assert source(g, ks["positive"])["inputs"]["text"] == "a (red:1.2) cat"  # ComfyUI reads (word:w) itself
    assert source(g, ks["negative"])["inputs"]["text"] == "blurry"
    assert source(g, ks["model"])["class_type"] == "CheckpointLoaderSimple" and ks["model"][1] == 0
    latent = source(g, ks["latent_image"])
    assert latent["inputs"] == {"width": 640, "height": 384, "batch_size": 3}
    decode = one(g, "VAEDecode")["inputs"]
    assert decode["vae"][1] == 2 and source(g, decode["vae"])["class_type"] == "CheckpointLoaderSimple"
    out = one(g, "SaveImageWebsocket")
    assert source(g, out["inputs"]["images"])["class_type"] == "VAEDecode"
    assert output_node(g) == find_nodes(g, "SaveImageWebsocket")[0]


def test_save_output_and_seed_override(info):
    r = GenerateRequest.from_fields(prompt="x", seed=5, width=512, height=512)
    g = build_graph(r, info, checkpoint=CKPT, output="save", seed=77)
    validate(g, info)
    assert one(g, "SaveImage")["inputs"]["filename_prefix"] == "latent-studio"
    assert not find_nodes(g, "SaveImageWebsocket")
    assert one(g, "KSampler")["inputs"]["seed"] == 77
    with pytest.raises(ValueError, match="seed"):
        build_graph(GenerateRequest.from_fields(prompt="x"), info, checkpoint=CKPT)
    with pytest.raises(ValueError, match="output"):
        build_graph(r, info, checkpoint=CKPT, output="disk")


def test_a_server_without_the_websocket_output(info):
    data = copy.deepcopy(info.data)
    del data["SaveImageWebsocket"]  # not a core node: some installs lack it
    lacking = ObjectInfo(data)
    r = GenerateRequest.from_fields(prompt="x", seed=1)
    with pytest.raises(RequestError, match=r"no node SaveImageWebsocket \(needed for images over the WebSocket; "):
        build_graph(r, lacking, checkpoint=CKPT)
    validate(build_graph(r, lacking, checkpoint=CKPT, output="save"), lacking)


def test_no_size_uses_the_nodes_default(info):
    g = build_graph(GenerateRequest.from_fields(prompt="x", seed=1), info, checkpoint="tiny-sd15")  # the checkpoint by stem
    validate(g, info)
    assert one(g, "EmptyLatentImage")["inputs"]["width"] == 512
    assert one(g, "CheckpointLoaderSimple")["inputs"]["ckpt_name"] == CKPT


def test_lora_tags_become_a_chain_of_loaders(info):
    r = GenerateRequest.from_fields(prompt="a cat <lora:ink:0.7>, sketch <lora:Film Grain:-0.5>",
                        negative_prompt="ugly <lora:detail-tweaker>", loras=(("styles/ink.safetensors", 0.25),),
                        seed=1, width=512, height=512)  # fmt: skip
    g = build_graph(r, info, checkpoint=CKPT)
    validate(g, info)
    loaders = find_nodes(g, "LoraLoader")
    got = [(g[i]["inputs"]["lora_name"], g[i]["inputs"]["strength_model"], g[i]["inputs"]["strength_clip"])
           for i in loaders]  # fmt: skip
    # the prompt's tags, the negative's, then the request's list
    assert got == [("styles/ink.safetensors", 0.7, 0.7), ("Film Grain.pt", -0.5, -0.5),
                   ("detail-tweaker.safetensors", 1.0, 1.0), ("styles/ink.safetensors", 0.25, 0.25)]  # fmt: skip
    first = g[loaders[0]]["inputs"]
    assert source(g, first["model"])["class_type"] == "CheckpointLoaderSimple" and first["model"][1] == 0
    assert source(g, first["clip"])["class_type"] == "CheckpointLoaderSimple" and first["clip"][1] == 1
    for prev, cur in zip(loaders, loaders[1:], strict=False):
        assert g[cur]["inputs"]["model"] == [prev, 0] and g[cur]["inputs"]["clip"] == [prev, 1]
    ks = one(g, "KSampler")["inputs"]
    assert ks["model"] == [loaders[-1], 0]
    texts = [n["inputs"] for n in nodes(g, "CLIPTextEncode")]
    assert [t["text"] for t in texts] == ["a cat , sketch", "ugly"]
    assert all(t["clip"] == [loaders[-1], 1] for t in texts)


def test_lora_errors(info, recorded):
    with pytest.raises(RequestError, match=r"no LoRA 'nothere' \(it has: styles/ink.safetensors"):
        build_graph(GenerateRequest.from_fields(prompt="<lora:nothere:1>", seed=1), info, checkpoint=CKPT)
    with pytest.raises(RequestError, match=r"no LoRA 'ink' \(it has: none\)"):
        build_graph(GenerateRequest.from_fields(prompt="<lora:ink:1>", seed=1), recorded, checkpoint=CKPT)
    with pytest.raises(RequestError, match="The prompt cannot be read: the LoRA weight 'heavy'"):
        build_graph(GenerateRequest.from_fields(prompt="<lora:ink:heavy>", seed=1), info, checkpoint=CKPT)
    data = copy.deepcopy(info.data)
    del data["LoraLoader"]
    with pytest.raises(RequestError, match=r"no node LoraLoader \(needed for LoRAs\)"):
        build_graph(GenerateRequest.from_fields(prompt="<lora:ink:1>", seed=1), ObjectInfo(data), checkpoint=CKPT)
    with pytest.raises(RequestError, match=r"no model 'sdxl' \(it has: tiny-sd15.safetensors\)"):
        build_graph(GenerateRequest.from_fields(prompt="x", seed=1), info, checkpoint="sdxl")


def test_clip_skip(info):
    g = build_graph(GenerateRequest.from_fields(prompt="<lora:ink:0.5> x", clip_skip=2, seed=1), info, checkpoint=CKPT)
    validate(g, info)
    skip_id = find_nodes(g, "CLIPSetLastLayer")[0]
    skip = g[skip_id]["inputs"]
    assert skip["stop_at_clip_layer"] == -2
    assert source(g, skip["clip"])["class_type"] == "LoraLoader"  # after the LoRAs
    assert all(n["inputs"]["clip"] == [skip_id, 0] for n in nodes(g, "CLIPTextEncode"))
    g1 = build_graph(GenerateRequest.from_fields(prompt="x", clip_skip=1, seed=1), info, checkpoint=CKPT)
    assert not find_nodes(g1, "CLIPSetLastLayer")


def test_vae_override(info):
    r = GenerateRequest.from_fields(mode="img2img", prompt="x", vae="vae-ft-mse-840000", init_image=image(), seed=1)
    g = build_graph(r, info, checkpoint=CKPT, images={"init": "up.png"})
    validate(g, info)
    vae_id = find_nodes(g, "VAELoader")[0]
    assert g[vae_id]["inputs"]["vae_name"] == "vae-ft-mse-840000.safetensors"
    assert one(g, "VAEDecode")["inputs"]["vae"] == [vae_id, 0]
    assert one(g, "VAEEncode")["inputs"]["vae"] == [vae_id, 0]
    g0 = build_graph(r.replace(vae=""), info, checkpoint=CKPT, images={"init": "up.png"})
    assert not find_nodes(g0, "VAELoader")
    with pytest.raises(RequestError, match=r"no VAE 'kl-f8'"):
        build_graph(r.replace(vae="kl-f8"), info, checkpoint=CKPT, images={"init": "up.png"})


def test_img2img_graph(info):
    r = GenerateRequest.from_fields(mode="img2img", prompt="p <lora:ink:1>", negative_prompt="n", init_image=image(64, 48),
                        strength=0.6, steps=30, cfg=4.0, seed=9, sampler="Euler", schedule="Exponential")  # fmt: skip
    g = build_graph(r, info, checkpoint=CKPT, images={"init": "studio-init (1).png"})
    validate(g, info)
    assert one(g, "LoadImage")["inputs"]["image"] == "studio-init (1).png"  # an uploaded name, not in the combo
    # the last int(30 * 0.6) = 18 steps of the 30-step schedule, as the local engine (diffusers) runs them
    ks = one(g, "KSamplerAdvanced")["inputs"]
    assert (ks["noise_seed"], ks["steps"], ks["cfg"], ks["start_at_step"], ks["end_at_step"]) == (9, 30, 4.0, 12, 10000)
    assert (ks["add_noise"], ks["return_with_leftover_noise"]) == ("enable", "disable") and not find_nodes(g, "KSampler")
    assert (ks["sampler_name"], ks["scheduler"]) == ("euler", "exponential")
    enc = source(g, ks["latent_image"])
    assert enc["class_type"] == "VAEEncode" and source(g, enc["inputs"]["pixels"])["class_type"] == "LoadImage"
    assert not find_nodes(g, "EmptyLatentImage") and not find_nodes(g, "ImageScale")
    # a working size other than the image's: resized first, as the local engine does
    g2 = build_graph(r.replace(width=128, height=96), info, checkpoint=CKPT, images={"init": "i.png"}, seed=10)
    validate(g2, info)
    scale = one(g2, "ImageScale")["inputs"]
    assert (scale["width"], scale["height"], scale["upscale_method"]) == (128, 96, "lanczos")
    assert source(g2, one(g2, "VAEEncode")["inputs"]["pixels"])["class_type"] == "ImageScale"
    assert one(g2, "KSamplerAdvanced")["inputs"]["noise_seed"] == 10
    g3 = build_graph(r.replace(strength=1.0), info, checkpoint=CKPT, images={"init": "i.png"})
    assert one(g3, "KSampler")["inputs"]["denoise"] == 1.0  # strength 1: every step, from pure noise
    with pytest.raises(RequestError, match=r"3 steps at denoising strength 0.2 run no step"):
        build_graph(r.replace(steps=3, strength=0.2), info, checkpoint=CKPT, images={"init": "i.png"})
    with pytest.raises(ValueError, match=r"images\['init'\]"):
        build_graph(r, info, checkpoint=CKPT)


def test_inpaint_graph_four_channels(info):
    r = GenerateRequest.from_fields(mode="inpaint", prompt="a hat", init_image=image(), mask=mask(), strength=0.8, seed=3)
    g = build_graph(r, info, checkpoint=CKPT, images={"init": "i.png", "mask": "m.png"})
    validate(g, info)
    masks = one(g, "LoadImageMask")["inputs"]
    assert masks == {"image": "m.png", "channel": "red"}
    ks = one(g, "KSamplerAdvanced")["inputs"]
    assert (ks["steps"], ks["start_at_step"]) == (20, 4)  # int(20 * 0.8) = 16 steps run
    noise = source(g, ks["latent_image"])
    assert noise["class_type"] == "SetLatentNoiseMask"
    assert source(g, noise["inputs"]["mask"])["class_type"] == "LoadImageMask"
    assert source(g, noise["inputs"]["samples"])["class_type"] == "VAEEncode"
    assert source(g, ks["positive"])["class_type"] == "CLIPTextEncode"
    assert not find_nodes(g, "InpaintModelConditioning")


def test_inpaint_graph_nine_channels(info):
    r = GenerateRequest.from_fields(mode="inpaint", prompt="a hat", negative_prompt="bad", init_image=image(), mask=mask(),
                        strength=1.0, seed=3)  # fmt: skip
    g = build_graph(r, info, checkpoint=CKPT, images={"init": "i.png", "mask": "m.png"}, inpaint_model=True)
    validate(g, info)
    cond_id = find_nodes(g, "InpaintModelConditioning")[0]
    cond = g[cond_id]["inputs"]
    assert cond["noise_mask"] is True
    assert source(g, cond["positive"])["inputs"]["text"] == "a hat"
    assert source(g, cond["negative"])["inputs"]["text"] == "bad"
    assert source(g, cond["pixels"])["class_type"] == "LoadImage"
    assert source(g, cond["mask"])["class_type"] == "LoadImageMask"
    assert source(g, cond["vae"])["class_type"] == "CheckpointLoaderSimple" and cond["vae"][1] == 2
    ks = one(g, "KSampler")["inputs"]
    assert (ks["positive"], ks["negative"], ks["latent_image"]) == ([cond_id, 0], [cond_id, 1], [cond_id, 2])
    assert ks["denoise"] == 1.0
    assert not find_nodes(g, "VAEEncode") and not find_nodes(g, "SetLatentNoiseMask")
    with pytest.raises(ValueError, match=r"images\['mask'\]"):
        build_graph(r, info, checkpoint=CKPT, images={"init": "i.png"})


def test_upscale_resize(info):
    r = GenerateRequest.from_fields(mode="upscale", upscale_mode="resize", init_image=image(64, 48), scale=2.5)
    g = build_graph(r, info, checkpoint=CKPT, images={"init": "i.png"})  # no seed needed, no model loaded
    validate(g, info)
    assert classes(g) == ["LoadImage", "ImageScale", "SaveImageWebsocket"]
    scale = one(g, "ImageScale")["inputs"]
    assert (scale["width"], scale["height"], scale["upscale_method"], scale["crop"]) == (160, 120, "lanczos",
                                                                                          "disabled")  # fmt: skip


def test_upscale_model(info):
    r = GenerateRequest.from_fields(mode="upscale", upscale_mode="model", upscaler="tiny-compact-x2", init_image=image(64, 48),
                        width=200, height=152)  # fmt: skip
    g = build_graph(r, info, checkpoint=CKPT, images={"init": "i.png"}, output="save")
    validate(g, info)
    assert classes(g) == ["LoadImage", "UpscaleModelLoader", "ImageUpscaleWithModel", "ImageScale", "SaveImage"]
    assert one(g, "UpscaleModelLoader")["inputs"]["model_name"] == "tiny-compact-x2.safetensors"
    scale = one(g, "ImageScale")["inputs"]
    assert (scale["width"], scale["height"]) == (200, 152)
    assert source(g, scale["image"])["class_type"] == "ImageUpscaleWithModel"
    with pytest.raises(RequestError, match=r"no upscaler model 'realesrgan' \(it has: tiny-compact-x2"):
        build_graph(r.with_fields(upscaler="realesrgan"), info, checkpoint=CKPT, images={"init": "i.png"})


def test_upscale_diffusion(info):
    r = GenerateRequest.from_fields(mode="upscale", upscale_mode="diffusion", upscaler="tiny-compact-x2", prompt="sharp",
                        init_image=image(64, 48), scale=2.0, strength=0.3, steps=10, seed=4)  # fmt: skip
    g = build_graph(r, info, checkpoint=CKPT, images={"init": "i.png"})
    validate(g, info)
    ks = one(g, "KSamplerAdvanced")["inputs"]
    assert (ks["start_at_step"], ks["steps"], ks["noise_seed"]) == (7, 10, 4)  # int(10 * 0.3) = 3 steps run
    enc = source(g, ks["latent_image"])
    assert enc["class_type"] == "VAEEncode"
    scale = source(g, enc["inputs"]["pixels"])
    assert scale["class_type"] == "ImageScale" and (scale["inputs"]["width"], scale["inputs"]["height"]) == (128, 96)
    assert source(g, scale["inputs"]["image"])["class_type"] == "ImageUpscaleWithModel"
    assert source(g, one(g, "SaveImageWebsocket")["inputs"]["images"])["class_type"] == "VAEDecode"
    # without an upscaler: Lanczos; a size off the multiple of 8 is worked at 8s and scaled back at the end
    r2 = r.with_fields(upscaler=None, scale=1.5)  # 96 x 72
    g2 = build_graph(r2, info, checkpoint=CKPT, images={"init": "i.png"})
    validate(g2, info)
    assert not find_nodes(g2, "UpscaleModelLoader")
    r3 = r.with_fields(upscaler=None, width=100, height=60)
    g3 = build_graph(r3, info, checkpoint=CKPT, images={"init": "i.png"})
    validate(g3, info)
    sizes = [(n["inputs"]["width"], n["inputs"]["height"]) for n in nodes(g3, "ImageScale")]
    assert sizes == [(104, 64), (100, 60)]
    out = one(g3, "SaveImageWebsocket")["inputs"]["images"]
    assert source(g3, out)["class_type"] == "ImageScale"


def test_latent_upscale_is_local_only(info):
    r = GenerateRequest.from_fields(mode="upscale", upscale_mode="latent", init_image=image(), seed=1)
    with pytest.raises(UnsupportedError, match="x4 latent upscaler runs on the local engine only"):
        build_graph(r, info, checkpoint=CKPT, images={"init": "i.png"})


def test_every_required_input_is_filled(info):
    """Even inputs the studio has no value for (the server refuses a missing one despite its default)."""
    reqs = [
        (GenerateRequest.from_fields(prompt="x <lora:ink:1>", clip_skip=3, vae="vae-ft-mse-840000", seed=1), {}, False),
        (GenerateRequest.from_fields(mode="img2img", init_image=image(), seed=1, width=64, height=64), {"init": "i"}, False),
        (GenerateRequest.from_fields(mode="inpaint", init_image=image(), mask=mask(), seed=1), {"init": "i", "mask": "m"}, True),
        (GenerateRequest.from_fields(mode="inpaint", init_image=image(), mask=mask(), seed=1), {"init": "i", "mask": "m"}, False),
        (
            GenerateRequest.from_fields(
                mode="upscale", upscale_mode="diffusion", upscaler="tiny-compact-x2", init_image=image(), seed=1
            ),
            {"init": "i"},
            False,
        ),  # fmt: skip
        (
            GenerateRequest.from_fields(mode="upscale", upscale_mode="model", upscaler="tiny-compact-x2", init_image=image()),
            {"init": "i"},
            False,
        ),  # fmt: skip
    ]
    seen = set()
    for r, imgs, nine in reqs:
        for output in ("websocket", "save"):
            g = build_graph(r, info, checkpoint=CKPT, images=imgs, inpaint_model=nine, output=output)
            validate(g, info)
            for node in g.values():
                required, _ = info.inputs(node["class_type"])
                assert set(required) <= set(node["inputs"]), node
                seen.add(node["class_type"])
    assert set(REQUIRED_NODES) <= seen | {"ImageScale"}


# -- the graphs as recorded: every request builds exactly the graph it built before the per-mode rewrite ----------
RECORDED = Path(__file__).parent / "data" / "comfyui" / "graphs.json"
_LORA_TAGS = "a cat <lora:ink:0.7>, sketch <lora:Film Grain:-0.5>"
_UP = {"mode": "upscale", "init_image": image(64, 48)}
_DIFF = {**_UP, "upscale_mode": "diffusion", "prompt": "sharp", "strength": 0.3, "steps": 10, "seed": 4}
_INPAINT = {"mode": "inpaint", "prompt": "a hat", "init_image": image(), "mask": mask(), "strength": 0.8, "seed": 3}
_ADDONS = {"vae": "vae-ft-mse-840000", "clip_skip": 2, "loras": (("detail-tweaker", 0.4),)}
_BOTH = {"images": {"init": "i.png", "mask": "m.png"}}
_INIT = {"images": {"init": "i.png"}}

# name -> (server, request fields, build_graph arguments besides the checkpoint)
GRAPH_CASES: dict[str, tuple[str, dict, dict]] = {
    "txt2img": ("full", {"prompt": "a (red:1.2) cat", "negative_prompt": "blurry", "sampler": "DPM++ 2M",
                         "schedule": "Karras", "steps": 12, "cfg": 5.5, "seed": 1234, "width": 640, "height": 384,
                         "batch": 3}, {}),
    "txt2img-no-size": ("full", {"prompt": "x", "seed": 1}, {}),
    "txt2img-save-seed": ("full", {"prompt": "x", "seed": 5, "width": 512, "height": 512}, {"output": "save", "seed": 77}),
    "txt2img-server-sampler-name": ("full", {"prompt": "x", "seed": 1, "sampler": "dpmpp_2m_sde_gpu",
                                             "schedule": "beta"}, {}),
    "txt2img-loras": ("full", {"prompt": _LORA_TAGS, "negative_prompt": "ugly <lora:detail-tweaker>",
                               "loras": (("styles/ink.safetensors", 0.25),), "seed": 1}, {}),
    "txt2img-clip-skip": ("full", {"prompt": "x", "clip_skip": 2, "seed": 1}, {}),
    "txt2img-vae": ("full", {"prompt": "x", "vae": "vae-ft-mse-840000", "seed": 1}, {}),
    "txt2img-all-addons": ("full", {"prompt": _LORA_TAGS, **_ADDONS, "clip_skip": 3, "seed": 1}, {"output": "save"}),
    "txt2img-no-websocket": ("no-websocket", {"prompt": "x", "seed": 1}, {"output": "save"}),
    "img2img": ("full", {"mode": "img2img", "prompt": "p <lora:ink:1>", "negative_prompt": "n",
                         "init_image": image(64, 48), "strength": 0.6, "steps": 30, "cfg": 4.0, "seed": 9,
                         "sampler": "Euler", "schedule": "Exponential"}, {"images": {"init": "studio-init (1).png"}}),
    "img2img-resized": ("full", {"mode": "img2img", "prompt": "p", "init_image": image(64, 48), "width": 128,
                                 "height": 96, "seed": 9}, {**_INIT, "seed": 10}),
    "img2img-same-size": ("full", {"mode": "img2img", "prompt": "p", "init_image": image(64, 48), "width": 64,
                                   "height": 48, "seed": 9}, _INIT),
    "img2img-addons": ("full", {"mode": "img2img", "prompt": "p", "init_image": image(), **_ADDONS, "seed": 2},
                       {**_INIT, "output": "save"}),
    "inpaint": ("full", _INPAINT, _BOTH),
    "inpaint-save": ("full", _INPAINT, {**_BOTH, "output": "save"}),
    "inpaint-model": ("full", {**_INPAINT, "negative_prompt": "bad", "strength": 1.0}, {**_BOTH, "inpaint_model": True}),
    "inpaint-addons": ("full", {**_INPAINT, **_ADDONS}, _BOTH),
    "inpaint-model-addons": ("full", {**_INPAINT, **_ADDONS, "prompt": _LORA_TAGS},
                             {**_BOTH, "inpaint_model": True}),
    "upscale-resize": ("full", {**_UP, "upscale_mode": "resize", "scale": 2.5}, _INIT),
    "upscale-resize-size": ("full", {**_UP, "upscale_mode": "resize", "width": 100, "height": 60},
                            {**_INIT, "output": "save"}),
    "upscale-model": ("full", {**_UP, "upscale_mode": "model", "upscaler": "tiny-compact-x2", "width": 200,
                               "height": 152}, {**_INIT, "output": "save"}),
    "upscale-model-scale": ("full", {**_UP, "upscale_mode": "model", "upscaler": "tiny-compact-x2", "scale": 2.0},
                            _INIT),
    "upscale-diffusion": ("full", {**_DIFF, "upscaler": "tiny-compact-x2", "scale": 2.0}, _INIT),
    "upscale-diffusion-lanczos": ("full", {**_DIFF, "scale": 1.5}, _INIT),
    "upscale-diffusion-off8": ("full", {**_DIFF, "width": 100, "height": 60}, _INIT),
    "upscale-diffusion-model-off8": ("full", {**_DIFF, "upscaler": "tiny-compact-x2", "width": 100, "height": 60},
                                     {**_INIT, "output": "save", "seed": 8}),
    "upscale-diffusion-addons": ("full", {**_DIFF, **_ADDONS, "prompt": _LORA_TAGS, "scale": 2.0}, _INIT),
    # refusals: which one is said first is part of the behaviour
    "error-latent": ("full", {**_UP, "upscale_mode": "latent", "seed": 1}, _INIT),
    "error-unknown-mode": ("full", {"mode": "outpaint", "prompt": "x", "seed": 1}, {}),
    "error-output": ("full", {"prompt": "x", "seed": 1}, {"output": "disk"}),
    "error-no-seed": ("full", {"prompt": "x"}, {}),
    "error-no-init": ("full", {"mode": "img2img", "init_image": image(), "seed": 1}, {}),
    "error-no-mask": ("full", _INPAINT, _INIT),
    "error-no-websocket": ("no-websocket", {"prompt": "<lora:nothere:1>", "sampler": "PLMS", "seed": 1}, {}),
    "error-sampler-before-lora": ("full", {"prompt": "<lora:nothere:1>", "sampler": "PLMS", "seed": 1}, {}),
    "error-schedule": ("full", {"prompt": "x", "schedule": "Polyexponential", "seed": 1}, {}),
    "error-unreadable-prompt": ("full", {"prompt": "<lora:ink:heavy>", "seed": 1}, {}),
    "error-lora": ("full", {"prompt": "<lora:nothere:1>", "seed": 1}, {}),
    "error-vae-before-lora": ("full", {"prompt": "<lora:nothere:1>", "vae": "kl-f8", "seed": 1}, {}),
    "error-no-lora-loader": ("no-lora-loader", {"prompt": "<lora:ink:1>", "seed": 1}, {}),
    "error-no-clip-skip-node": ("no-clip-skip", {"prompt": "x", "clip_skip": 2, "seed": 1}, {}),
    "error-no-inpaint-conditioning": ("no-inpaint-conditioning", _INPAINT, {**_BOTH, "inpaint_model": True}),
    "error-no-upscaler": ("full", {**_UP, "upscale_mode": "model", "upscaler": "", "scale": 2.0}, _INIT),
    "error-unknown-upscaler": ("full", {**_DIFF, "upscaler": "realesrgan", "scale": 2.0}, _INIT),
    "error-no-upscale-loader": ("no-upscale-loader", {**_UP, "upscale_mode": "model", "upscaler": "x", "scale": 2.0},
                                _INIT),
    "error-model": ("full", {"prompt": "x", "seed": 1}, {"checkpoint": "sdxl"}),
}  # fmt: skip
_LACKS = {"no-websocket": "SaveImageWebsocket", "no-lora-loader": "LoraLoader", "no-clip-skip": "CLIPSetLastLayer",
          "no-inpaint-conditioning": "InpaintModelConditioning", "no-upscale-loader": "UpscaleModelLoader"}  # fmt: skip


def _server(info: ObjectInfo, name: str) -> ObjectInfo:
    data = copy.deepcopy(info.data)
    data.pop(_LACKS.get(name, ""), None)
    return ObjectInfo(data)


def _built(info: ObjectInfo, name: str) -> str:
    """The case's graph as JSON text (order, ints and floats as built), or its refusal as "Type: message"."""
    server, fields, args = GRAPH_CASES[name]
    args = {"checkpoint": CKPT, **args}
    try:
        return json.dumps(build_graph(GenerateRequest.from_fields(**fields), _server(info, server), **args), indent=1)
    except (ValueError, UnsupportedError) as e:
        return f"{type(e).__name__}: {e}"


def record_graphs(info: ObjectInfo) -> None:
    """Rewrite the recorded graphs (only ever from the code whose graphs are the reference)."""
    RECORDED.write_text(json.dumps({n: _built(info, n) for n in GRAPH_CASES}, indent=1) + "\n", encoding="utf-8")


@pytest.mark.parametrize("name", list(GRAPH_CASES))
def test_graphs_are_the_recorded_ones(info, name):
    recorded = json.loads(RECORDED.read_text(encoding="utf-8"))
    assert set(recorded) == set(GRAPH_CASES)
    assert _built(info, name) == recorded[name]
    if not recorded[name].startswith("{"):
        return
    validate(json.loads(recorded[name]), _server(info, GRAPH_CASES[name][0]))


# -- validate: one test per fault -------------------------------------------------------------------------------
@pytest.fixture
def good(info) -> dict:
    g = build_graph(GenerateRequest.from_fields(prompt="x", seed=1, width=512, height=512), info, checkpoint=CKPT)
    validate(g, info)
    return g


def _id(g: dict, cls: str) -> str:
    return find_nodes(g, cls)[0]


def test_validate_unknown_class(good, info):
    good[_id(good, "VAEDecode")]["class_type"] = "VAEDecodeHyper"
    with pytest.raises(GraphError, match=r"^Node 6 \(VAEDecodeHyper\): the ComfyUI server has no node VAEDecodeHyper$"):
        validate(good, info)


def test_validate_missing_required_input(good, info):
    del good[_id(good, "KSampler")]["inputs"]["denoise"]
    with pytest.raises(GraphError, match=r"Node 5 \(KSampler\): the required input 'denoise' is missing"):
        validate(good, info)


def test_validate_combo_value(good, info):
    good[_id(good, "KSampler")]["inputs"]["sampler_name"] = "Euler a"
    with pytest.raises(GraphError, match=r"KSampler\): sampler_name 'Euler a' is not one of euler, .*\(44 in all\)"):
        validate(good, info)


def test_validate_link_to_a_missing_node(good, info):
    good[_id(good, "KSampler")]["inputs"]["model"] = ["99", 0]
    with pytest.raises(GraphError, match=r"input 'model' links to node '99', which is not in the graph"):
        validate(good, info)
    good[_id(good, "KSampler")]["inputs"]["model"] = [1, 0]
    with pytest.raises(GraphError, match=r"node ids are strings"):
        validate(good, info)


def test_validate_output_index_out_of_range(good, info):
    good[_id(good, "VAEDecode")]["inputs"]["vae"] = ["1", 3]
    with pytest.raises(GraphError, match=r"links to output 3 of node 1 \(CheckpointLoaderSimple\), which has 3"):
        validate(good, info)


def test_validate_link_type_mismatch(good, info):
    good[_id(good, "KSampler")]["inputs"]["model"] = ["1", 1]  # the CLIP output
    with pytest.raises(GraphError, match=r"input 'model' wants MODEL but node 1 \(CheckpointLoaderSimple\) output 1 "
                                         r"is CLIP"):  # fmt: skip
        validate(good, info)


def test_validate_number_out_of_range(good, info):
    good[_id(good, "EmptyLatentImage")]["inputs"]["width"] = 8
    with pytest.raises(GraphError, match=r"EmptyLatentImage\): width 8 is out of range: use 16 to 16384"):
        validate(good, info)
    good[_id(good, "EmptyLatentImage")]["inputs"]["width"] = 512
    good[_id(good, "KSampler")]["inputs"]["denoise"] = 1.5
    with pytest.raises(GraphError, match=r"denoise 1.5 is out of range: use 0.0 to 1.0"):
        validate(good, info)


def test_validate_value_of_the_wrong_type(good, info):
    good[_id(good, "KSampler")]["inputs"]["steps"] = "20"
    with pytest.raises(GraphError, match=r"steps must be int, got '20'"):
        validate(good, info)
    good[_id(good, "KSampler")]["inputs"]["steps"] = 20
    good[_id(good, "KSampler")]["inputs"]["model"] = "tiny-sd15.safetensors"
    with pytest.raises(GraphError, match=r"input 'model' needs a link to a MODEL output"):
        validate(good, info)


def test_validate_no_output_and_cycles(good, info):
    g = copy.deepcopy(good)
    del g[_id(g, "SaveImageWebsocket")]
    with pytest.raises(GraphError, match="no output node"):
        validate(g, info)
    g = copy.deepcopy(good)
    enc = str(len(g) + 1)
    g[enc] = {"class_type": "VAEEncode", "inputs": {"pixels": [_id(g, "VAEDecode"), 0], "vae": ["1", 2]}}
    g[_id(g, "KSampler")]["inputs"]["latent_image"] = [enc, 0]
    with pytest.raises(GraphError, match="cycle"):
        validate(g, info)
    with pytest.raises(GraphError, match="empty"):
        validate({}, info)


# -- the server's refusals --------------------------------------------------------------------------------------
SAMPLER_LIST = "['euler', 'euler_cfg_pp', 'euler_ancestral', 'euler_ancestral_cfg_pp', 'heun', 'heunpp2', 'dpm_2']"
REFUSED = {  # the shape of a 400 answer of POST /prompt
    "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
              "details": "", "extra_info": {}},
    "node_errors": {
        "5": {
            "errors": [{"type": "value_not_in_list", "message": "Value not in list",
                        "details": f"sampler_name: 'foo' not in {SAMPLER_LIST}",
                        "extra_info": {"input_name": "sampler_name", "received_value": "foo"}}],
            "dependent_outputs": ["7"],
            "class_type": "KSampler",
        },
        "10": {
            "errors": [{"type": "required_input_missing", "message": "Required input is missing",
                        "details": "vae", "extra_info": {"input_name": "vae"}}],
            "dependent_outputs": ["7"],
            "class_type": "VAEDecode",
        },
    },
}  # fmt: skip


def test_describe_errors():
    text = describe_errors(REFUSED)
    assert text == ("ComfyUI refused the job: KSampler: Value not in list: sampler_name: 'foo' not in ['euler', "
                    "'euler_cfg_pp', 'euler_ancestral', 'euler_ancestral_cfg_pp', 'heun', ... (7 in all)]; "
                    "VAEDecode: Required input is missing: vae")  # fmt: skip
    no_nodes = {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because a node is missing the class_type property.",
            "details": "Node ID '#3'",
            "extra_info": {},
        },
        "node_errors": {},
    }
    assert describe_errors(no_nodes) == ("ComfyUI refused the job: Cannot execute because a node is missing the "
                                         "class_type property.: Node ID '#3'")  # fmt: skip
    assert describe_errors({"error": "no prompt", "node_errors": []}) == "ComfyUI refused the job: no prompt"
    assert describe_errors({}) == "ComfyUI refused the job"
    many = {"node_errors": {str(i): {"class_type": "KSampler", "errors": [{"message": f"bad {i}\nline"}]}
                            for i in range(6)}}  # fmt: skip
    text = describe_errors(many)
    assert "\n" not in text and text.endswith("KSampler: bad 2 line (and 3 more)")


def test_module_is_pure_python():
    code = (
        "import sys, studio.backends.comfyui.graphs; "
        "print(sorted(m for m in ('torch', 'diffusers', 'PySide6', 'socket') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() in ("[]", "['socket']")  # socket: maybe the interpreter's own; no torch, no Qt


if __name__ == "__main__":  # PYTHONPATH=. python tests/test_comfy_graphs.py: record the reference graphs
    record_graphs(with_files(json.loads(DATA.read_text(encoding="utf-8"))))

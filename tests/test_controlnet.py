"""ControlNets on tiny random models (SD 1.x and SDXL layouts): detection from files in the original and diffusers
layouts, the engine against diffusers' ControlNet pipelines, weight, start/end, control modes, several at once,
and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from studio.core import GenerateRequest, ModelError, RequestError
from studio.core.control import ControlSpec

SIZE = 64  # pixels: 8x8 latents with the 8x VAE, a 64 px hint for the ControlNet's 8x hint encoder
PROMPT = "a red circle"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """{family: (pipeline folder, ControlNetModel, {layout: path})} and a second SD 1.x ControlNet."""
    from studio.testing.tinycontrol import build_tiny_control_pipeline, save_controlnet, tiny_controlnet

    root = tmp_path_factory.mktemp("control")
    out: dict = {}
    for family in ("sd1", "sdxl"):
        pipe = build_tiny_control_pipeline(root / f"pipe-{family}", family)
        net = tiny_controlnet(pipe, seed=1)
        files = {
            "diffusers": save_controlnet(net, root / "ControlNet" / f"cn_{family}_canny.safetensors", "diffusers"),
            "original": save_controlnet(net, root / "ControlNet" / f"control_{family}_depth.safetensors", "original"),
            "bare": save_controlnet(net, root / "comfy" / "controlnet" / f"{family}_lineart.safetensors", "original",
                                    prefix=""),
            "folder": save_controlnet(net, root / "ControlNet" / f"{family}-scribble-diffusers", "folder"),
        }
        out[family] = (str(pipe), net, files)
    second = tiny_controlnet(out["sd1"][0], seed=2)
    out["second"] = (second, save_controlnet(second, root / "ControlNet" / "cn_sd1_second.safetensors"))
    out["root"] = root
    return out


@pytest.fixture(scope="module")
def engine():
    from studio.engine import Engine

    return Engine(device="cpu")


def hint(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """A control image: a white square outline on black (what a canny map of a square looks like)."""
    img = np.zeros((size, size, 3), np.uint8)
    a, b = size // 4 + seed, 3 * size // 4
    img[a:b, a] = img[a:b, b] = img[a, a:b] = img[b, a:b + 1] = 255
    return img


def req(model: str, controls=(), **kw) -> GenerateRequest:
    base = dict(prompt=PROMPT, model=model, steps=4, seed=1234, width=SIZE, height=SIZE, cfg=5.0, sampler="Euler",
                controls=tuple(controls))
    base.update(kw)
    return GenerateRequest(**base)


def diffusers_image(pipe, **kw) -> np.ndarray:
    import torch
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    # The weight given: diffusers' ControlNet img2img / inpaint pipelines default to 0.8, A1111 to 1.0.
    args = dict(prompt=PROMPT, num_inference_steps=4, guidance_scale=5.0, width=SIZE, height=SIZE,
                controlnet_conditioning_scale=1.0)
    args.update(kw)
    # A list of generators, one per image, as the engine passes them.
    out = pipe(**args, generator=[torch.Generator("cpu").manual_seed(1234)], output_type="np").images[0]
    return (out * 255).round().astype(np.uint8)


def control_pipe(cls_name: str, folder: str, controlnet):
    import diffusers

    cls = getattr(diffusers, cls_name)
    extra = {} if "XL" in cls_name else dict(safety_checker=None, requires_safety_checker=False)
    return cls.from_pretrained(folder, controlnet=controlnet, local_files_only=True, **extra)


def close(a: np.ndarray, b: np.ndarray, tol: int = 1) -> bool:
    return int(np.abs(a.astype(int) - b.astype(int)).max()) <= tol


# -- detection and listing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize(("layout", "control"), [("diffusers", "canny"), ("original", "depth"), ("bare", "lineart"),
                                                 ("folder", "scribble")])
def test_detected_from_keys_in_both_layouts(made, family, layout, control):
    from studio.core.modelfiles import classify, controlnet_layout, read_header

    path = made[family][2][layout]
    found = classify(path)
    assert (found.kind, found.arch, found.control) == ("controlnet", family, control)
    if layout != "folder":
        keys = list(read_header(path).keys)
        assert controlnet_layout(keys) == ("diffusers" if layout == "diffusers" else "original")
        if layout == "original":
            assert any(k.startswith("control_model.input_hint_block.") for k in keys)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("layout", ["original", "bare", "folder"])
def test_every_layout_loads_the_same_weights(made, family, layout):
    import json

    import torch

    from studio.engine.controlnet import load_controlnet

    pipe, net, files = made[family]
    base = json.loads((Path(pipe) / "unet" / "config.json").read_text())
    loaded = load_controlnet(Path(files[layout]), family, base, torch.float32, torch.device("cpu"))
    want, got = net.state_dict(), loaded.state_dict()
    assert set(want) == set(got)
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert loaded.config.attention_head_dim == net.config.attention_head_dim  # the heads: from the base U-Net


def test_library_lists_controlnets_from_a1111_and_comfy_folders(made):
    from studio.core.modellibrary import clear_cache
    from studio.session.library import addon_choices

    clear_cache()
    listed = addon_choices([str(made["root"])], "controlnet")
    names = sorted(Path(path).name for _label, path in listed)
    assert names == sorted(["cn_sd1_canny.safetensors", "control_sd1_depth.safetensors", "sd1_lineart.safetensors",
                            "sd1-scribble-diffusers", "cn_sdxl_canny.safetensors", "control_sdxl_depth.safetensors",
                            "sdxl_lineart.safetensors", "sdxl-scribble-diffusers", "cn_sd1_second.safetensors",
                            "builtin-scribble"])  # the built-in model's, shipped in models/
    labels = dict((Path(p).name, label) for label, p in listed)
    assert labels["cn_sdxl_canny.safetensors"] == "cn_sdxl_canny  ·  SDXL  ·  canny"
    # The checkpoint pickers do not offer them.
    from studio.session.library import model_choices

    assert not any("canny" in label for label, _ in model_choices([str(made["root"])]))


def test_t2i_adapters_and_control_loras_are_refused_by_name(tmp_path):
    import torch
    from safetensors.torch import save_file

    from studio.core.modelfiles import classify
    from studio.engine.controlnet import describe

    save_file({"adapter.conv_in.weight": torch.zeros(2, 2), "adapter.body.0.resnets.0.block1.weight": torch.zeros(2, 2)},
              str(tmp_path / "t2i.safetensors"))
    save_file({"lora_controlnet": torch.zeros(1), "input_blocks.1.0.in_layers.2.up": torch.zeros(2, 2)},
              str(tmp_path / "control-lora-canny-rank128.safetensors"))
    for name, kind in (("t2i.safetensors", "T2I-Adapter"), ("control-lora-canny-rank128.safetensors", "control-LoRA")):
        assert classify(tmp_path / name).kind == "unknown"
        with pytest.raises(ModelError, match=kind) as e:
            describe(tmp_path / name)
        assert "\n" not in str(e.value)


# -- the engine against diffusers -----------------------------------------------------------------------------


def test_txt2img_equals_diffusers_controlnet_pipeline(engine, made):
    pipe, net, files = made["sd1"]
    spec = ControlSpec(model=str(files["original"]), image=hint(), weight=0.8)
    seen = []
    ours = engine.generate(req(pipe, [spec]), on_step=seen.append)
    theirs = diffusers_image(control_pipe("StableDiffusionControlNetPipeline", pipe, net), image=_pil(hint()),
                             controlnet_conditioning_scale=0.8)
    assert close(ours.images[0], theirs)
    plain = engine.generate(req(pipe))
    assert not close(ours.images[0], plain.images[0], 2)  # the control changed the picture
    assert [s.step for s in seen] == [1, 2, 3, 4] and all(s.preview is not None for s in seen)  # live previews
    assert ours.notes == []


def _pil(a):
    from PIL import Image

    return Image.fromarray(a)


def test_sdxl_txt2img_equals_diffusers(engine, made):
    pipe, net, files = made["sdxl"]
    spec = ControlSpec(model=str(files["diffusers"]), image=hint())
    ours = engine.generate(req(pipe, [spec]))
    theirs = diffusers_image(control_pipe("StableDiffusionXLControlNetPipeline", pipe, net), image=_pil(hint()))
    assert close(ours.images[0], theirs)


def test_img2img_and_inpaint_equal_diffusers(engine, made):
    from studio.core.requests import InpaintOptions

    pipe, net, files = made["sd1"]
    spec = ControlSpec(model=str(files["diffusers"]), image=hint())
    init = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    ours = engine.generate(req(pipe, [spec], mode="img2img", init_image=init, strength=0.75))
    theirs = diffusers_image(control_pipe("StableDiffusionControlNetImg2ImgPipeline", pipe, net), image=_pil(init),
                             control_image=_pil(hint()), strength=0.75)
    assert close(ours.images[0], theirs)

    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    inpaint = InpaintOptions(mask_blur=0, masked_content="original", area="whole")
    ours = engine.generate(req(pipe, [spec], mode="inpaint", init_image=init, mask=mask, strength=1.0,
                               inpaint=inpaint))
    without = engine.generate(req(pipe, [], mode="inpaint", init_image=init, mask=mask, strength=1.0, inpaint=inpaint))
    inside = mask > 0
    assert np.array_equal(ours.images[0][~inside], init[~inside])  # outside the mask: the original pixels
    assert not close(ours.images[0][inside], without.images[0][inside], 2)  # inside: the control acted


def test_weight_zero_equals_the_run_without_control(engine, made):
    pipe, _net, files = made["sd1"]
    zero = engine.generate(req(pipe, [ControlSpec(model=str(files["diffusers"]), image=hint(), weight=0.0)]))
    plain = engine.generate(req(pipe))
    assert close(zero.images[0], plain.images[0])
    np.testing.assert_allclose(zero.latents, plain.latents, atol=1e-5)


def test_start_and_end_are_honoured_step_by_step(engine, made):
    pipe, _net, files = made["sd1"]
    plain = engine.generate(req(pipe)).latents
    late = engine.generate(req(pipe, [ControlSpec(model=str(files["diffusers"]), image=hint(), start=0.5)])).latents
    early = engine.generate(req(pipe, [ControlSpec(model=str(files["diffusers"]), image=hint(), end=0.5)])).latents
    assert late.shape == plain.shape == early.shape and len(plain) == 4

    def same(a, b):
        return np.allclose(a, b, atol=1e-5)

    # start 0.5: steps 1-2 run without the ControlNet (equal to the plain run's), 3-4 with it.
    assert same(late[0], plain[0]) and same(late[1], plain[1]) and not same(late[2], plain[2])
    # end 0.5: the first step already differs.
    assert not same(early[0], plain[0])


def test_two_controls_equal_diffusers_multicontrolnet(engine, made):
    pipe, net, files = made["sd1"]
    second, second_file = made["second"]
    specs = [ControlSpec(model=str(files["diffusers"]), image=hint(), weight=0.7),
             ControlSpec(model=str(second_file), image=hint(3), weight=0.5, start=0.25)]
    ours = engine.generate(req(pipe, specs))
    theirs = diffusers_image(control_pipe("StableDiffusionControlNetPipeline", pipe, [net, second]),
                             image=[_pil(hint()), _pil(hint(3))], controlnet_conditioning_scale=[0.7, 0.5],
                             control_guidance_start=[0.0, 0.25], control_guidance_end=[1.0, 1.0])
    assert close(ours.images[0], theirs)
    one = engine.generate(req(pipe, specs[:1]))
    assert not close(ours.images[0], one.images[0], 2)


def test_control_modes_map_to_guess_mode(engine, made):
    pipe, net, files = made["sd1"]
    more = ControlSpec(model=str(files["diffusers"]), image=hint(), mode="ControlNet is more important")
    ours = engine.generate(req(pipe, [more]))
    theirs = diffusers_image(control_pipe("StableDiffusionControlNetPipeline", pipe, net), image=_pil(hint()),
                             guess_mode=True)
    assert close(ours.images[0], theirs)
    # Mixed modes: the same mode by the per-ControlNet wrapper (a second, weight-0 balanced control beside it).
    idle = ControlSpec(model=str(made["second"][1]), image=hint(), weight=0.0)
    mixed = engine.generate(req(pipe, [more, idle]))
    assert close(mixed.images[0], theirs)
    prompt = engine.generate(req(pipe, [more.replace(mode="My prompt is more important")]))
    balanced = engine.generate(req(pipe, [more.replace(mode="Balanced")]))
    assert len({ours.images[0].tobytes(), prompt.images[0].tobytes(), balanced.images[0].tobytes()}) == 3


# -- bad input: one line each ---------------------------------------------------------------------------------


def test_controlnet_of_another_family_is_refused(engine, made):
    pipe = made["sd1"][0]
    with pytest.raises(RequestError, match="SDXL ControlNet") as e:
        engine.generate(req(pipe, [ControlSpec(model=str(made["sdxl"][2]["diffusers"]), image=hint())]))
    assert "\n" not in str(e.value)


def test_control_image_of_another_size_is_resized_and_said(engine, made):
    pipe, _net, files = made["sd1"]
    spec = ControlSpec(model=str(files["diffusers"]), image=hint(size=SIZE * 2))
    r = engine.generate(req(pipe, [spec]))
    assert r.images[0].shape == (SIZE, SIZE, 3)
    assert r.notes == [f"Control 0: its image ({SIZE * 2}x{SIZE * 2}) was resized to the picture's {SIZE}x{SIZE}"]
    same = engine.generate(req(pipe, [spec.replace(image=hint())]))
    assert close(r.images[0], same.images[0], 40)  # a square scaled down is about the square


def test_corrupt_controlnet_file_is_one_line(engine, made, tmp_path):
    pipe, _net, files = made["sd1"]
    data = Path(files["diffusers"]).read_bytes()
    bad = tmp_path / "cn_sd1_truncated.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated") as e:
        engine.generate(req(pipe, [ControlSpec(model=str(bad), image=hint())]))
    assert "\n" not in str(e.value)
    # The engine still works after it.
    assert engine.generate(req(pipe, [ControlSpec(model=str(files["diffusers"]), image=hint())])).images


# -- metadata and the command line ----------------------------------------------------------------------------


def test_cli_control_writes_a1111_keys_and_saves_the_control_image(made, tmp_path, capsys):
    from PIL import Image

    from studio.cli import main
    from studio.core.metadata import control_fields, model_hash, read_parameters

    pipe, _net, files = made["sd1"]
    Image.fromarray(hint()).save(tmp_path / "edges.png")
    code = main(["generate", "--model", pipe, "--prompt", PROMPT, "--steps", "2", "--width", str(SIZE), "--height",
                 str(SIZE), "--seed", "7", "--out", str(tmp_path / "out"), "--no-server", "-q", "--save-control",
                 "--control", f"{tmp_path / 'edges.png'}:model={files['original']},weight=0.5,end=0.8,mode=control,"
                 "module=canny"])
    out = capsys.readouterr().out.split()
    assert code == 0, out
    png = next(Path(p) for p in out if p.endswith(".png") and ".control" not in p)
    text = read_parameters(png)
    digest = model_hash(files["original"])[:8]
    assert (f'ControlNet 0: "Module: canny, Model: control_sd1_depth [{digest}], Weight: 0.5, Resize Mode: Crop and '
            'Resize, Guidance Start: 0.0, Guidance End: 0.8, Pixel Perfect: False, Control Mode: ControlNet is more '
            'important"') in text
    assert control_fields(text) == [dict(model="control_sd1_depth", model_hash=digest, module="canny", weight=0.5,
                                         start=0.0, end=0.8, mode="ControlNet is more important")]
    beside = png.with_name(f"{png.stem}.control0.png")
    assert str(beside) in out and np.array_equal(np.asarray(Image.open(beside).convert("RGB")), hint())


def test_a1111_controlnet_keys_are_read(tmp_path):
    from studio.core.metadata import control_fields

    text = ('a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: x, ControlNet 1: "Module: '
            'openpose_full, Model: control_v11p_sd15_openpose [cab727d4], Weight: 0.6, Guidance Start: 0.2, Guidance '
            'End: 1", ControlNet 0: "Module: depth_midas, Model: control_v11f1p_sd15_depth [cfd03158], Weight: 1, '
            'Resize Mode: Crop and Resize, Low Vram: False, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, '
            'Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, Control Mode: My prompt is more important", '
            'Version: v1.6.0')
    assert control_fields(text) == [
        dict(model="control_v11f1p_sd15_depth", model_hash="cfd03158", module="depth", weight=1.0, start=0.0, end=1.0,
             mode="My prompt is more important"),
        dict(model="control_v11p_sd15_openpose", model_hash="cab727d4", module="pose", weight=0.6, start=0.2, end=1.0,
             mode="Balanced"),
    ]


@pytest.mark.parametrize(("arg", "says"), [("edges.png", "IMAGE:model=PATH"), ("edges.png:model=x,speed=2", "unknown option"),
                                           ("edges.png:model=x,mode=loud", "balanced, prompt or control"),
                                           ("missing.png:model=x", "Control image not found")])
def test_cli_bad_control_argument_is_one_line(tmp_path, capsys, arg, says, monkeypatch):
    from PIL import Image

    from studio.cli import main

    monkeypatch.chdir(tmp_path)
    Image.fromarray(hint()).save(tmp_path / "edges.png")
    code = main(["generate", "--prompt", PROMPT, "--no-server", "--control", arg])
    err = capsys.readouterr().err.strip()
    assert code != 0 and says in err and len(err.splitlines()) == 1, err


# -- a ComfyUI server: core nodes, checked against /object_info ------------------------------------------------


def comfy_info():
    """The recorded ComfyUI 0.27 /object_info plus its two ControlNet nodes (object_info-controlnet.json: their
    INPUT_TYPES from ComfyUI's nodes.py, in the recorded format, with two ControlNet files on the server)."""
    import json

    from studio.backends.comfyui.graphs import ObjectInfo

    data_dir = Path(__file__).parent / "data" / "comfyui"
    data = json.loads((data_dir / "object_info-0.27.json").read_text(encoding="utf-8"))
    data.update(json.loads((data_dir / "object_info-controlnet.json").read_text(encoding="utf-8")))
    return ObjectInfo(data)


def test_comfy_graph_chains_controlnet_nodes(made):
    from studio.backends.comfyui.graphs import build_graph, find_nodes, validate

    info = comfy_info()
    specs = (ControlSpec(model="control_v11p_sd15_canny", image=hint(), weight=0.7, start=0.1, end=0.9),
             ControlSpec(model="control_v11f1p_sd15_depth", image=hint()))
    for mode, images in (("txt2img", {}), ("img2img", {"init": "init.png"})):
        r = GenerateRequest(prompt=PROMPT, mode=mode, controls=specs, seed=1, width=SIZE, height=SIZE,
                            init_image=hint() if mode == "img2img" else None)
        g = build_graph(r, info, checkpoint="tiny-sd15.safetensors", output="save",
                        images={**images, "control0": "c0.png", "control1": "c1.png"})
        validate(g, info)  # every input against the server's types, combos and ranges
        loaders, applies = find_nodes(g, "ControlNetLoader"), find_nodes(g, "ControlNetApplyAdvanced")
        names = [g[n]["inputs"]["control_net_name"] for n in loaders]
        assert names == ["control_v11p_sd15_canny.pth", "sd15/control_v11f1p_sd15_depth.safetensors"]
        first, second = (g[n]["inputs"] for n in applies)
        assert (first["strength"], first["start_percent"], first["end_percent"]) == (0.7, 0.1, 0.9)
        assert g[first["image"][0]]["inputs"]["image"] == "c0.png" and g[second["image"][0]]["inputs"]["image"] == "c1.png"
        assert second["positive"] == [applies[0], 0] and second["negative"] == [applies[0], 1]  # chained
        sampler = next(n for n in g if g[n]["class_type"].startswith("KSampler"))
        assert g[sampler]["inputs"]["positive"] == [applies[1], 0] and g[sampler]["inputs"]["negative"] == [applies[1], 1]


def test_comfy_refuses_what_core_nodes_cannot_do():
    from studio.backends.base import UnsupportedError
    from studio.backends.comfyui.graphs import ObjectInfo, build_graph

    info = comfy_info()
    r = GenerateRequest(prompt=PROMPT, seed=1, width=SIZE, height=SIZE,
                        controls=(ControlSpec(model="control_v11p_sd15_canny", image=hint(), mode="My prompt is more important"),))
    with pytest.raises(UnsupportedError, match="control mode"):
        build_graph(r, info, checkpoint="tiny-sd15.safetensors", output="save", images={"control0": "c0.png"})
    ok = r.replace(controls=(r.controls[0].replace(mode="Balanced", model="no-such-controlnet"),))
    with pytest.raises(RequestError, match="ControlNet") as e:
        build_graph(ok, info, checkpoint="tiny-sd15.safetensors", output="save", images={"control0": "c0.png"})
    assert "\n" not in str(e.value)
    recorded = ObjectInfo({k: v for k, v in info.data.items() if not k.startswith("ControlNet")})
    with pytest.raises(RequestError, match="ControlNetLoader"):
        build_graph(ok, recorded, checkpoint="tiny-sd15.safetensors", output="save", images={"control0": "c0.png"})


# -- the other modes and the run's machinery -------------------------------------------------------------------


def test_diffusion_upscale_tiles_see_their_part_of_the_control_image(engine, made):
    from studio.core.requests import UpscaleOptions
    from studio.engine.controlnet import control_region

    big = np.zeros((2 * SIZE, 2 * SIZE, 3), np.uint8)
    big[:SIZE, SIZE:] = 255  # the top-right quarter white
    part = control_region(big[::2, ::2], (2 * SIZE, 2 * SIZE), (SIZE, 0, SIZE, SIZE - 8), 16)  # scaled up, cut, padded
    assert part.shape == (SIZE, SIZE, 3) and part[:, 4:].min() >= 250  # (Lanczos rings by the quarter's edge)
    assert np.array_equal(control_region(big, (2 * SIZE, 2 * SIZE), (0, 0, SIZE, SIZE), 16), big[:SIZE, :SIZE])

    pipe, _net, files = made["sd1"]
    init = np.random.default_rng(1).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    up = dict(mode="upscale", init_image=init, strength=0.5, width=None, height=None,
              upscale=UpscaleOptions(method="diffusion", scale=2.0, tile=SIZE, tile_overlap=16))
    spec = ControlSpec(model=str(files["diffusers"]), image=hint(size=2 * SIZE))
    seen = []
    ours = engine.generate(req(pipe, [spec], **up), on_step=seen.append)
    plain = engine.generate(req(pipe, [], **up))
    assert ours.images[0].shape == plain.images[0].shape == (2 * SIZE, 2 * SIZE, 3)
    assert not close(ours.images[0], plain.images[0], 2) and seen


def test_only_masked_inpaint_cuts_the_control_image_like_the_picture():
    from studio.engine.controlnet import control_picture

    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[8:24, 40:56] = 255
    spec = ControlSpec(model="x", image=img)
    pic, note = control_picture(spec, 0, (32, 32), (SIZE, SIZE), (40, 8, 56, 24))
    assert note == "" and pic.size == (32, 32) and np.asarray(pic).min() == 255  # the box: all white
    half = ControlSpec(model="x", image=img[::2, ::2])
    pic, note = control_picture(half, 1, (32, 32), (SIZE, SIZE), (40, 8, 56, 24))
    assert note.startswith("Control 1: its image (32x32) was resized") and np.asarray(pic).mean() > 200


def test_cancel_and_deep_cache_with_a_control(engine, made):
    import threading

    pipe, _net, files = made["sd1"]
    spec = ControlSpec(model=str(files["diffusers"]), image=hint())
    cancel = threading.Event()
    seen = []

    def on_step(info):
        seen.append(info.step)
        if info.step == 2:
            cancel.set()

    r = engine.generate(req(pipe, [spec], steps=6), on_step=on_step, cancel=cancel)
    assert r.cancelled and r.images == [] and seen == [1, 2]
    cached = engine.generate(req(pipe, [spec], steps=15, deep_cache=3))
    assert cached.notes == ["Deep cache skipped: a ControlNet guides every U-Net block"]
    assert cached.request.deep_cache == 0


def test_fast_and_turbo_speed_modes_keep_the_control(engine, made):
    """fast: the bf16 U-Net copy takes the ControlNet's residuals (cast like its other inputs); turbo: the OpenVINO
    U-Net cannot take them, so every call falls back to the torch U-Net: the exact run's picture."""
    pytest.importorskip("openvino")
    pipe, _net, files = made["sd1"]
    spec = ControlSpec(model=str(files["diffusers"]), image=hint())
    exact = engine.generate(req(pipe, [spec]))
    turbo = engine.generate(req(pipe, [spec], speed="turbo"))
    assert turbo.request.speed in ("turbo", "fast", "exact")
    if turbo.request.speed == "turbo":  # every step's latent is the torch U-Net's (the decode may run in bf16)
        np.testing.assert_allclose(turbo.latents, exact.latents, atol=1e-5)
    fast = engine.generate(req(pipe, [spec], speed="fast"))
    plain_fast = engine.generate(req(pipe, [], speed="fast"))
    assert fast.images[0].shape == exact.images[0].shape
    assert not close(fast.images[0], plain_fast.images[0], 2)  # the control acted in fast mode too


def test_a1111_pickle_controlnet_loads_with_weights_only(made, tmp_path):
    """lllyasviel's control_v11p_sd15_*.pth: a pickled state dict, keys under control_model.; the family from the
    name (a pickle's shapes are not read before loading), the tensors with torch.load(weights_only=True)."""
    import json

    import torch

    from studio.core.modelfiles import classify
    from studio.engine.controlnet import load_controlnet
    from studio.testing.tinycontrol import controlnet_to_original

    pipe, net, _files = made["sd1"]
    sd = {"control_model." + k: v for k, v in controlnet_to_original(net.state_dict(), 2).items()}
    path = tmp_path / "control_v11p_sd15_softedge.pth"
    torch.save(sd, path)
    found = classify(path)
    assert (found.kind, found.arch, found.control) == ("controlnet", "sd1", "softedge")
    base = json.loads((Path(pipe) / "unet" / "config.json").read_text())
    loaded = load_controlnet(path, "sd1", base, torch.float32, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values(), strict=True))


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_runs_both_passes_with_the_control(engine, made, upscaler):
    from studio.core.requests import HiresOptions

    pipe, _net, files = made["sd1"]
    spec = ControlSpec(model=str(files["diffusers"]), image=hint())
    hires = HiresOptions(enabled=True, scale=2.0, upscaler=upscaler, steps=2, strength=0.5)
    ours = engine.generate(req(pipe, [spec], steps=2, hires=hires))
    plain = engine.generate(req(pipe, [], steps=2, hires=hires))
    assert ours.images[0].shape == (2 * SIZE, 2 * SIZE, 3)
    assert not close(ours.images[0], plain.images[0], 2)


def test_comfy_backend_uploads_the_control_image(tmp_path):
    import json

    from fake_comfyui import FakeComfy, allow_loopback

    from studio.backends.comfyui.backend import ComfyUIBackend

    info = tmp_path / "object_info.json"
    info.write_text(json.dumps(comfy_info().data), encoding="utf-8")
    with allow_loopback():
        fake = FakeComfy(models={"checkpoints": ["tiny-sd15.safetensors"]}, cache=False, object_info_path=info).start()
        backend = ComfyUIBackend(fake.url)
        try:
            assert ("control_v11p_sd15_canny.pth", "control_v11p_sd15_canny") in backend.start().controlnets
            spec = ControlSpec(model="/my/models/ControlNet/control_v11p_sd15_canny.safetensors", image=hint(), weight=0.6)
            result = backend.generate(GenerateRequest(prompt=PROMPT, model="tiny-sd15.safetensors", steps=2, seed=5,
                                                      width=SIZE, height=SIZE, controls=(spec,)))
        finally:
            backend.close()
            fake.stop()
    assert len(result.images) == 1
    graph = fake.prompts[-1]["prompt"]
    apply = next(n["inputs"] for n in graph.values() if n["class_type"] == "ControlNetApplyAdvanced")
    assert apply["strength"] == 0.6
    uploaded = graph[apply["image"][0]]["inputs"]["image"]
    assert any(u.get("name") == uploaded or uploaded.endswith(str(u.get("name"))) for u in fake.uploads), fake.uploads

"""The hires fix group of the prompt panel: Text mode only, its final size, its values into the request, an A1111
hires PNG restored into it."""

from __future__ import annotations

import dataclasses

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.backends.fake import FakeBackend

MODELS = (("/m/4x-UltraSharp.pth", "4x-UltraSharp (ESRGAN x4)"),)

A1111_TEXT = """a castle on a hill
Negative prompt: lowres
Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Hires upscale: 1.75, \
Hires steps: 12, Hires upscaler: 4x-UltraSharp, Version: v1.10.1"""


class WithUpscalers(FakeBackend):
    def info(self):
        return dataclasses.replace(super().info(), upscalers=MODELS)


def test_the_group_shows_in_text_mode_only(qtbot, window):
    hires, s = window.prompt_panel.hires_options, window.session
    s.set_mode("txt2img")
    assert hires.isVisible() and not hires.fields.isVisible()  # off: the checkbox alone
    s.set_mode("img2img")
    assert not hires.isVisible()
    s.set_mode("upscale")
    assert not hires.isVisible()
    s.set_mode("txt2img")
    assert hires.isVisible()


def test_checking_it_shows_the_options_and_the_final_size(qtbot, window):
    hires, s = window.prompt_panel.hires_options, window.session
    s.set_mode("txt2img")
    p = s.params.copy()
    p.width, p.height = 512, 384
    s.set_params(p)
    hires.enabled.setChecked(True)
    s.set_params(s.params.copy())  # the panel redraws from the session, as after any change
    assert s.params.hires_fix and hires.fields.isVisible()
    assert hires.final.text() == "512x384 → 1024x768"
    hires.scale.setValue(1.5)
    s.set_params(s.params.copy())
    assert hires.final.text() == "512x384 → 768x576"
    hires.upscaler.setCurrentIndex(hires.upscaler.findData("Latent (bicubic)"))
    hires.steps.setValue(10)
    hires.strength.setValue(0.55)
    r = s.params.to_request()
    assert (r.hires.enabled, r.hires.scale, r.hires.upscaler, r.hires.steps, r.hires.strength) == (
        True, 1.5, "Latent (bicubic)", 10, 0.55)  # fmt: skip
    p = s.params.copy()
    p.width = p.height = 2048
    p.hires_scale = 4.0
    s.set_params(p)
    assert "too large" in hires.final.text()
    assert s.generate() is None  # refused with one line, nothing queued
    hires.enabled.setChecked(False)
    assert not s.params.to_request().hires.enabled


def test_image_mode_requests_carry_no_hires_fix(qtbot, window):
    p = window.session.params.copy()
    p.hires_fix, p.mode = True, "img2img"
    assert not p.to_request().hires.enabled


def test_an_a1111_hires_png_restores_the_group(qtbot, make_window, tmp_path):
    window = make_window(WithUpscalers())
    s, hires = window.session, window.prompt_panel.hires_options
    window.start_engine()
    qtbot.waitUntil(lambda: hires.upscaler.findData("/m/4x-UltraSharp.pth") >= 0)
    s.set_mode("img2img")
    path = tmp_path / "a1111.png"
    info = PngInfo()
    info.add_text("parameters", A1111_TEXT)
    Image.new("RGB", (896, 1344)).save(path, pnginfo=info)
    assert s.open_image(path)
    p = s.params
    assert (p.mode, p.width, p.height, p.steps) == ("txt2img", 512, 768, 25)
    assert (p.hires_fix, p.hires_scale, p.hires_steps, p.hires_strength) == (True, 1.75, 12, 0.45)
    assert p.hires_upscaler == "/m/4x-UltraSharp.pth"  # the listed file of that name
    assert hires.isVisible() and hires.enabled.isChecked() and hires.upscaler.currentText().startswith("4x-Ultra")
    assert hires.final.text() == "512x768 → 896x1344"


def test_a_hires_run_saves_the_final_size_with_a1111_keys(qtbot, window, fake, out_dir):
    from studio.core.metadata import read_parameters

    fake.run_free()
    s = window.session
    s.set_mode("txt2img")
    p = s.params.copy()
    p.width, p.height, p.steps, p.seed = 64, 48, 3, 9
    p.hires_fix, p.hires_scale, p.hires_steps = True, 2.0, 4
    s.set_params(p)
    with qtbot.waitSignal(s.result_image, timeout=10000) as got:
        s.generate()
    path, image = got.args
    assert (image.width(), image.height()) == (128, 96)
    assert fake.requests[-1].hires.enabled and fake.requests[-1].hires.steps == 4
    text = read_parameters(path)
    assert "Size: 64x48" in text and "Denoising strength: 0.7, Hires upscale: 2, Hires steps: 4, " \
        "Hires upscaler: Latent," in text

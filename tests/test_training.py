"""The built-in model's training code: data, analysis, a few training steps, export, the shipped model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from studio.training.analysis import analyse, calibrate, classify_shape, shape_features  # noqa: E402
from studio.training.data import (  # noqa: E402
    COLORS,
    POSITIONS,
    SHAPES,
    ShapesDataset,
    held_out_triples,
    is_held_out,
    random_mask,
    to_tensor_batch,
)
from studio.training.models import PRESETS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ROOT / "models" / "builtin"

_CAPTION = re.compile(
    r"^a (?:(small|large) )?(\w+) (circle|square|triangle|diamond|star)"
    r"(?: (?:in|on) the (top left|top right|bottom left|bottom right|top|bottom|left|right|center))?"
    r"(?: on a (\w+) background)?$"
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # results reproducible bit for bit


def test_dataset_is_deterministic_and_index_addressable():
    a, b = ShapesDataset(7), ShapesDataset(7)
    for i in (0, 5, 12345, 5):
        img_a, cap_a = a.sample(i)
        img_b, cap_b = b.sample(i)
        assert cap_a == cap_b
        assert np.array_equal(img_a, img_b)
        assert img_a.shape == (64, 64, 3) and img_a.dtype == np.uint8
    # order does not matter: sample(i) is a pure function of (seed, i)
    assert np.array_equal(ShapesDataset(7).sample(5)[0], a.sample(5)[0])
    assert ShapesDataset(8).sample(0)[1] != a.sample(0)[1] or not np.array_equal(ShapesDataset(8).sample(0)[0], a.sample(0)[0])


def test_vocabulary_is_at_least_what_the_issue_asks():
    assert {"circle", "square", "triangle"} <= set(SHAPES) and len(SHAPES) >= 4
    assert {"red", "green", "blue", "yellow", "orange", "purple", "white", "black"} <= set(COLORS)
    assert {"left", "right", "top", "bottom", "center", "top left"} <= set(POSITIONS)


def test_captions_match_the_drawn_scene():
    """Single-object captions parsed, the image analysed: colour, shape, position and background agree."""
    ds = ShapesDataset(3, two_object_prob=0.0)
    checked = 0
    for i in range(150):
        img, caption = ds.sample(i)
        scene = ds.scene(i)
        m = _CAPTION.match(caption)
        assert m, caption
        size, color, shape, position, background = m.groups()
        obj = scene.objects[0]
        assert (color, shape) == (obj.color, obj.shape)
        if size:
            assert size == obj.size
        if background:
            assert background == scene.background
        a = analyse(img)
        assert a.color == color, caption
        assert a.shape == shape, caption
        if position:
            assert a.position == position, caption
            checked += 1
        else:
            assert a.position == obj.position
    assert checked > 100


def test_two_object_captions_name_both_objects():
    ds = ShapesDataset(4, two_object_prob=1.0)
    for i in range(20):
        scene = ds.scene(i)
        assert len(scene.objects) == 2
        assert " and " in scene.caption
        for o in scene.objects:
            assert f"{o.color} {o.shape}" in scene.caption


def test_held_out_triples_never_appear_in_training():
    triples = held_out_triples()
    assert 20 <= len(triples) <= 100
    ds = ShapesDataset(0)
    for i in range(400):
        for o in ds.scene(i).objects:
            assert not is_held_out(o.color, o.shape, o.position)
    held = ShapesDataset(0, held_out=True)
    for i in range(20):
        o = held.scene(i).objects[0]
        assert is_held_out(o.color, o.shape, o.position)


def test_analyser_calibration_is_reproducible():
    cents = calibrate(n=150, seed=99)
    assert set(cents) == set(SHAPES)
    ds = ShapesDataset(99, two_object_prob=0.0)
    img = ds.sample(0)[0]
    a = analyse(img)
    assert classify_shape(a.features, cents) == ds.scene(0).objects[0].shape
    assert shape_features(np.pad(np.ones((10, 10), bool), 5)).shape == (8,)


def test_random_masks_are_binary_and_partial():
    rng = np.random.default_rng(0)
    for _ in range(10):
        m = random_mask(rng)
        assert m.shape == (64, 64)
        assert set(np.unique(m)) <= {0.0, 1.0}
        assert 0 < m.mean() < 1


def test_vae_steps_lower_the_loss():
    from studio.training.models import build_vae

    torch.manual_seed(0)
    vae = build_vae(PRESETS["tiny"].vae)
    x = to_tensor_batch([ShapesDataset(0).sample(i)[0] for i in range(4)])[:, :, 16:48, 16:48]
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)

    def loss_fn():
        post = vae.encode(x).latent_dist
        return (vae.decode(post.mode()).sample - x).abs().mean()

    first = loss_fn().item()
    for _ in range(20):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.8 * first


def test_unet_and_text_encoder_steps_lower_the_loss():
    from studio.training.models import build_text_encoder, build_unet, load_tokenizer, tokenize
    from studio.training.train_unet import make_noise_scheduler

    torch.manual_seed(0)
    preset = PRESETS["tiny"]
    te = build_text_encoder(preset.text)
    unet = build_unet(preset.unet, preset.text.hidden_size)
    ids = tokenize(load_tokenizer(), ["a red circle", "a blue square on the left", "", "a star"])
    assert ids.shape == (4, 77)
    sched = make_noise_scheduler()
    z0 = torch.randn(4, 4, 16, 16)
    noise = torch.randn(4, 4, 16, 16)
    t = torch.tensor([100, 300, 500, 900])
    zt = sched.add_noise(z0, noise, t)
    extra = torch.cat([torch.ones(4, 1, 16, 16), torch.zeros(4, 4, 16, 16)], dim=1)
    opt = torch.optim.AdamW(list(unet.parameters()) + list(te.parameters()), lr=2e-3)

    def loss_fn():
        h = te(ids).last_hidden_state
        return (unet(torch.cat([zt, extra], 1), t, encoder_hidden_states=h).sample - noise).pow(2).mean()

    first = loss_fn().item()
    for _ in range(15):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.8 * first


def test_tiny_end_to_end_run_exports_a_loadable_folder(tmp_path):
    """train-vae, train-unet (with resume), export and fit-preview at tiny settings."""
    from studio.training.export import export, fit_preview, load_pipeline
    from studio.training.train_unet import train_unet
    from studio.training.train_vae import train_vae

    preset = PRESETS["tiny"]
    preset = type(preset)(**{**preset.__dict__, "pool_size": 64, "threads": 1})
    r = train_vae(tmp_path / "run", preset, steps=4, eval_images=8, progress=False)
    assert r["scaling_factor"] > 0
    train_unet(tmp_path / "run", preset, steps=3, progress=False)
    r2 = train_unet(tmp_path / "run", preset, steps=5, progress=False)  # resumes from step 3
    assert r2["steps"] == 5
    out = export(tmp_path / "run", tmp_path / "model")
    fit = fit_preview(out, n=64)
    assert np.array(fit["factors"]).shape == (4, 3) and len(fit["bias"]) == 3
    index = json.loads((out / "model_index.json").read_text())
    assert index["requires_safety_checker"] is False
    assert index["safety_checker"] == [None, None]
    pipe = load_pipeline(out)
    assert pipe.unet.config.in_channels == 9
    assert pipe.vae.config.scaling_factor == pytest.approx(r["scaling_factor"])


# ---------------------------------------------------------------- the shipped model


def _builtin_or_skip():
    if not (BUILTIN / "model_index.json").exists():
        pytest.skip("models/builtin has not been exported yet (run `python -m studio.training export`)")
    return BUILTIN


def test_builtin_model_folder_is_complete_and_small():
    folder = _builtin_or_skip()
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / sub).is_dir(), sub
    rgb = json.loads((folder / "latent_rgb.json").read_text())
    assert np.array(rgb["factors"]).shape == (4, 3) and len(rgb["bias"]) == 3
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total <= 30 * 1024 * 1024
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "epsilon"
    assert sched["beta_start"] == pytest.approx(0.00085) and sched["beta_end"] == pytest.approx(0.012)


def test_builtin_model_draws_a_red_circle():
    """Loads offline (plain from_pretrained, default dtype) and draws red as the dominant object colour."""
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    folder = _builtin_or_skip()
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    out = pipe(
        prompt=["a red circle on a white background"] * 2,
        image=Image.new("RGB", (64, 64), (128, 128, 128)),
        mask_image=Image.new("L", (64, 64), 255),
        num_inference_steps=20,
        guidance_scale=6.0,
        generator=gens,
        output_type="np",
    ).images
    for im in out:
        img = (np.clip(im, 0, 1) * 255).round().astype(np.uint8)
        a = analyse(img)
        assert a.background == "white"
        assert a.color == "red"


def test_evaluator_prompts_are_held_out_and_scored_right_on_true_images():
    from studio.training.data import IMAGE_SIZE, Scene, ShapeObject, render
    from studio.training.evaluate import eval_prompts, score

    items = eval_prompts(repeats=1)
    assert len(items) == len(held_out_triples())
    images = []
    for it in items:
        assert is_held_out(it["color"], it["shape"], it["position"])
        assert it["color"] != it["background"]
        col, row = POSITIONS[it["position"]]
        obj = ShapeObject(it["shape"], it["color"], "medium", it["position"], 12.0 + 20 * col, 12.0 + 20 * row, 18.0)
        images.append(render(Scene(it["background"], (obj,), it["prompt"])))
        assert images[-1].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    r = score(images, items)
    assert r["color"] == r["shape"] == r["position"] == 1.0


def test_loss_weights_raise_high_noise_and_keep_min_snr_elsewhere():
    from studio.training.train_unet import loss_weights, make_noise_scheduler

    sched = make_noise_scheduler()
    t = torch.tensor([0, 100, 500, 700, 850, 950, 999])
    ac = sched.alphas_cumprod[t]
    snr = ac / (1 - ac)
    plain = loss_weights(sched, t)
    assert torch.allclose(plain, torch.clamp(snr, max=5.0) / snr)  # min-SNR-5
    assert plain[0] < 0.01 and plain[-1] == 1.0
    raised = loss_weights(sched, t, x0_floor=0.1, cap=10.0)
    assert torch.equal(raised[:3], plain[:3])  # low noise: untouched
    assert raised[4] == pytest.approx(0.1 / snr[4].item())  # t=850: 0.1 / SNR (about 4)
    assert 3.0 < raised[4] < 6.0
    assert raised[-1] == 10.0 and raised[-2] == 10.0  # the cap
    assert bool(torch.all(raised >= plain))


def test_builtin_model_follows_position_words():
    """One object asked for in each of the nine cells (one seed each): most must land in the cell named.
    Chance is 1 in 9: the model shipped before the high-noise loss weight got 0 of these 9, this one 9."""
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from studio.training.data import POSITION_NAMES, position_phrase

    folder = _builtin_or_skip()
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    prompts = [f"a large blue square {position_phrase(p)} on a white background" for p in POSITION_NAMES]
    out = pipe(
        prompt=prompts,
        image=Image.new("RGB", (64, 64), (128, 128, 128)),
        mask_image=Image.new("L", (64, 64), 255),
        num_inference_steps=20,
        guidance_scale=6.0,
        generator=[torch.Generator().manual_seed(100 + k) for k in range(len(prompts))],
        output_type="np",
    ).images
    got = [analyse((np.clip(im, 0, 1) * 255).round().astype(np.uint8)).position for im in out]
    right = sum(g == p for g, p in zip(got, POSITION_NAMES, strict=True))
    assert right >= 7, list(zip(POSITION_NAMES, got, strict=True))


def test_training_commands_name_a_missing_input_in_one_line(tmp_path, capsys):
    """No hub lookup, no traceback: exit 2 and what is missing, with the command that makes it."""
    from studio.training.cli import main

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train-unet", "--preset", "tiny", "--run-dir", str(run), "--steps", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m studio.training: error: trained VAE not found")
    assert "train-vae --run-dir" in err and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["train-unet", "--preset", "tiny", "--run-dir", str(run), "--init-from", str(tmp_path / "no.pt")])
    assert e.value.code == 2
    assert "--init-from checkpoint not found" in capsys.readouterr().err
    assert not (run / "unet" / "pool.pt").exists()  # nothing built on the way to the error


def test_step_loop_saves_logs_and_stops_like_every_trainer(capsys):
    from studio.training.common import StepLoop, lr_at

    saves, validated = [], []
    loop = StepLoop(saves.append, start=2, steps=6, desc="t", log_every=2, checkpoint_every_s=-1.0, progress=False,
                    validate=validated.append, validate_every=2)
    seen = []
    for step in loop:
        seen.append(step)
        loop.end_step(step)
    assert seen == [2, 3, 4, 5] and saves == [3, 4, 5, 6] and validated == [4, 6] and not loop.stopped_early
    assert [loop.logs(s) for s in range(4)] == [True, False, True, False]
    assert loop.lr(3, 1.0, 2) == lr_at(3, 6, 2, 1.0)
    # a time budget: until the training time reaches it (the lr follows the share spent, the warm-up the steps)
    saves.clear()
    loop = StepLoop(saves.append, start=0, steps=0, desc="t", log_every=1, checkpoint_every_s=1e9, budget_s=3.0,
                    progress=False)
    for step in loop:
        loop.end_step(step, trained_s=step + 1.0)
    assert step == 2 and saves == [] and not loop.stopped_early
    assert loop.lr(0, 1.0, 4, trained_s=1.5) == lr_at(50_000, 100_000, 0, 1.0) * 0.25
    # --max-minutes: saved, said, and stopped early
    loop = StepLoop(saves.append, start=5, steps=100, desc="t", log_every=1, checkpoint_every_s=1e9, max_minutes=0.0,
                    started=0.0, progress=False)
    for step in loop:
        loop.end_step(step)
    assert step == 5 and saves == [6] and loop.stopped_early
    assert capsys.readouterr().out == "stopped at step 6 (--max-minutes)\n"

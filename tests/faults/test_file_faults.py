"""Fault suite, part of issue 24 item 3: broken model files and odd images, used as an artist would use them.

Every case is made in the test from a good file (a tiny random-weight model and its add-ons): cut to half, zero
bytes, random bytes, or a valid file of another kind or architecture. Each goes where an artist would put it (the
model, a LoRA of the request, its VAE, an embedding named in the prompt, the upscaler) through the local engine and
through the CLI (`main()` in process, its backend sharing one engine). A bad file is one line naming the file and the
reason (an EngineError, or exit 2 with one stderr line), never a traceback, the bad file is left as it was, no output
file is written, and a normal run afterwards gives the same pixels as before (the loaded model is not left broken).
Images of every kind go in every mode (img2img, inpaint image and mask, upscale; the CLI reader and the window's
reader): they run with the pixels the file shows, or are refused with one line.

Counts of a full run of this file (`test_the_tally` prints them; run with -s):

    ==================================  =====
    cases tried                           141
    clean one-line messages               105
    ran correctly (pixels checked)         36
    tracebacks                              0
    hangs                                   0
    lost or half-written files              0
    payloads run                            0
    ==================================  =====

Payloads: hostile pickles as every kind of file are tests/test_bad_model_files.py
(test_a_pickle_past_the_pre_scan_gets_the_security_refusal_as_every_kind, and the hostile-pickle tests of
test_addons.py, test_upscalers.py and test_singlefile.py): none runs. Here the random-bytes `.ckpt` files are the
only pickles, and hold no payload.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import studio.backends.local
import studio.cli
from studio.core.errors import EngineError
from studio.core.requests import GenerateRequest

pytestmark = pytest.mark.faults

TALLY: Counter = Counter()
HANG_S = 120.0  # a case slower than this counts as a hang (tiny models: each takes well under a second)
PROMPT = "a red circle"
BIG = 64  # px: the images of the image cases


def req(model: str, **kw) -> GenerateRequest:
    base = dict(prompt=PROMPT, model=model, steps=1, width=64, height=64, seed=7, cfg=5.0, preview="none")
    return GenerateRequest.from_fields(**{**base, **kw})


def _digest(path: Path) -> str:
    if path.is_dir():
        return "|".join(f"{p.relative_to(path)}:{_digest(p)}" for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"


def _check_one_line(text: str, name: str) -> None:
    """One line naming the file, with a reason after it; no traceback, no "unexpected error"."""
    text = text.strip()
    assert text and "\n" not in text, text
    assert "Traceback" not in text and "unexpected error" not in text.lower(), text
    assert name in text, (name, text)
    assert len(text) > len(name) + 10, text  # a reason, not the name alone


def refused(call: Callable[[], object], bad: Path, name: str | None = None) -> str:
    """call() raises an EngineError of one line naming `bad`; the file is left as it was."""
    TALLY["cases"] += 1
    before, t = _digest(bad), time.monotonic()
    try:
        call()
    except EngineError as e:
        message = str(e)
    except Exception:
        TALLY["tracebacks"] += 1
        raise
    else:
        raise AssertionError(f"{bad.name} was accepted")
    finally:
        TALLY["hangs"] += time.monotonic() - t > HANG_S
        if _digest(bad) != before:
            TALLY["lost"] += 1
    assert _digest(bad) == before, f"{bad} was changed"
    _check_one_line(message, name or bad.name)
    TALLY["clean"] += 1
    return message


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = studio.cli.main(list(argv))
    except BaseException:
        TALLY["tracebacks"] += 1
        raise
    out, err = capsys.readouterr()
    return code, out, err


def cli_refused(capsys, out_dir: Path, bad: Path, *argv: str, name: str | None = None) -> str:
    """The CLI exits 2 with one stderr line naming `bad`; nothing is written to the output folder."""
    TALLY["cases"] += 1
    before, t = _digest(bad), time.monotonic()
    code, out, err = cli(capsys, *argv, "--out", str(out_dir), "-q")
    TALLY["hangs"] += time.monotonic() - t > HANG_S
    written = [p for p in out_dir.rglob("*") if p.is_file()] if out_dir.exists() else []
    if written or _digest(bad) != before:
        TALLY["lost"] += 1
    assert not written and _digest(bad) == before, (written, bad)
    if "Traceback" in err:
        TALLY["tracebacks"] += 1
    assert code == 2 and not out, (code, out, err)
    _check_one_line(err, name or bad.name)
    TALLY["clean"] += 1
    return err


# -- the good files, and one engine for every case -------------------------------------------------------------


def _kohya_lora(folder: str, path: Path, seed: int) -> Path:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(folder) / "unet")
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Linear) and (".attn1.to_" in name or ".attn2.to_" in name):
            k = "lora_unet_" + name.replace(".", "_")
            sd[k + ".lora_down.weight"] = torch.randn(4, m.in_features, generator=g) * 0.5
            sd[k + ".lora_up.weight"] = torch.randn(m.out_features, 4, generator=g) * 0.5
            sd[k + ".alpha"] = torch.tensor(2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def _sdxl_lora(path: Path) -> Path:
    """A LoRA of SDXL's layout (two text encoders, 2048-wide cross-attention)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k in ("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", "lora_te1_text_model_encoder_layers_0_mlp_fc1"):
        sd[k + ".lora_down.weight"] = torch.randn(4, 1280, generator=g)
        sd[k + ".lora_up.weight"] = torch.randn(1280, 4, generator=g)
        sd[k + ".alpha"] = torch.tensor(4.0)
    k = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    sd[k + ".lora_down.weight"] = torch.randn(4, 2048, generator=g)
    sd[k + ".lora_up.weight"] = torch.randn(640, 4, generator=g)
    sd[k + ".alpha"] = torch.tensor(4.0)
    save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def good(tiny_model, tiny_sr_file, tmp_path_factory) -> dict[str, Path]:
    """The good files: a single-file checkpoint (.safetensors and .ckpt), a LoRA, a VAE, an embedding, an
    upscaler; the library (`lib`) holds the add-ons in A1111's folders."""
    from ldm_layout import write_single_file
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("file-faults")
    lib = root / "lib"
    single = write_single_file(tiny_model, root / "good" / "tiny.safetensors")
    ckpt = root / "good" / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(single))}, ckpt)
    (lib / "VAE").mkdir(parents=True)
    vae = lib / "VAE" / "sharp.safetensors"
    shutil.copy(Path(tiny_model) / "vae" / "diffusion_pytorch_model.safetensors", vae)
    (lib / "embeddings").mkdir()
    emb = lib / "embeddings" / "fuzzy.safetensors"
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(4))}, str(emb))
    return {
        "root": root,
        "lib": lib,
        "checkpoint": single,
        "ckpt": ckpt,
        "lora": _kohya_lora(tiny_model, lib / "Lora" / "ink.safetensors", 1),
        "vae": vae,
        "embedding": emb,
        "upscaler": Path(tiny_sr_file),
        "sdxl-lora": _sdxl_lora(root / "good" / "xl-style.safetensors"),
    }


@pytest.fixture(scope="module")
def backend(good):
    """One local backend (its engine looks in the library) for the engine cases and the CLI's runs."""
    b = studio.backends.local.LocalBackend(device="cpu", model_folders=[good["lib"]])
    yield b
    b.close()


@pytest.fixture(scope="module")
def plain(backend, tiny_model) -> np.ndarray:
    return backend.generate(req(tiny_model)).images[0]


@pytest.fixture
def routed(backend, monkeypatch):
    """The CLI's local backend runs on the module's engine (no model load per command); the requests it got."""
    seen: list[GenerateRequest] = []
    real = studio.backends.local.LocalBackend.generate

    def generate(self, request, on_step=None, cancel=None):
        seen.append(request)
        return real(backend, request, on_step, cancel)

    monkeypatch.setattr(studio.backends.local.LocalBackend, "generate", generate)
    return seen


def still_works(backend, tiny_model, plain) -> None:
    """A normal run with the good model gives the same pixels as before the bad file."""
    np.testing.assert_array_equal(backend.generate(req(tiny_model)).images[0], plain)


def _broken(good_file: Path, way: str, dest: Path) -> Path:
    """A copy of `good_file` at `dest`: cut to half, zero bytes, or random bytes of the same length (up to 64 KB)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = good_file.read_bytes()
    if way == "half":
        dest.write_bytes(data[: len(data) // 2])
    elif way == "zero":
        dest.write_bytes(b"")
    else:
        dest.write_bytes(np.random.default_rng(len(data)).bytes(min(len(data), 65536)))
    return dest


WAYS = ("half", "zero", "random")


# -- checkpoints -----------------------------------------------------------------------------------------------


def _bad_checkpoints(good, tiny_model, tiny_inpaint_model) -> list[tuple[Path, str]]:
    """(bad model, the name its message must say)."""
    bad = good["root"] / "bad-models"
    out = []
    for way in WAYS:
        for key, suffix in (("checkpoint", ".safetensors"), ("ckpt", ".ckpt")):
            p = _broken(good[key], way, bad / f"{way}-model{suffix}")
            out.append((p, p.name))
        folder = bad / f"folder-{way}-unet"
        if not folder.exists():
            shutil.copytree(tiny_model, folder)
            _broken(Path(tiny_model) / "unet" / "diffusion_pytorch_model.safetensors", way,
                    folder / "unet" / "diffusion_pytorch_model.safetensors")  # fmt: skip
        out.append((folder, folder.name))
    # Other architectures and kinds, each a valid file.
    wrong = bad / "folder-inpaint-unet"  # a 9-channel U-Net's weights under a 4-channel config
    if not wrong.exists():
        shutil.copytree(tiny_model, wrong)
        shutil.copy(Path(tiny_inpaint_model) / "unet" / "diffusion_pytorch_model.safetensors",
                    wrong / "unet" / "diffusion_pytorch_model.safetensors")  # fmt: skip
    out.append((wrong, wrong.name))
    for key in ("lora", "vae", "embedding", "upscaler", "sdxl-lora"):
        p = bad / f"{key}-as-model.safetensors"
        shutil.copy(good[key], p)
        out.append((p, p.name))
    return out


def test_bad_checkpoints_through_the_engine(backend, plain, good, tiny_model, tiny_inpaint_model):
    for bad, name in _bad_checkpoints(good, tiny_model, tiny_inpaint_model):
        refused(lambda bad=bad: backend.generate(req(str(bad))), bad, name)
        still_works(backend, tiny_model, plain)


def test_bad_checkpoints_through_the_cli(capsys, routed, backend, plain, good, tiny_model, tiny_inpaint_model):
    for bad, name in _bad_checkpoints(good, tiny_model, tiny_inpaint_model):
        cli_refused(capsys, good["root"] / "out", bad, "generate", "--model", str(bad), "--prompt", PROMPT,
                    "--steps", "1", "--width", "64", "--height", "64", name=name)  # fmt: skip
    still_works(backend, tiny_model, plain)


# -- LoRAs, VAEs, embeddings -------------------------------------------------------------------------------------


def _bad_addons(good, kind: str) -> list[Path]:
    """Broken and wrong files to give as `kind` (lora, vae): in the library's folder of that kind."""
    folder = good["lib"] / {"lora": "Lora", "vae": "VAE"}[kind]
    out = [_broken(good[kind], way, folder / f"{way}-{kind}.safetensors") for way in WAYS]
    others = {"lora": ("sdxl-lora", "checkpoint", "vae", "upscaler"), "vae": ("lora", "embedding", "checkpoint")}
    for other in others[kind]:
        p = good["root"] / "wrong" / f"{other}-as-{kind}.safetensors"
        p.parent.mkdir(exist_ok=True)
        shutil.copy(good[other], p)
        out.append(p)
    return out


@pytest.mark.parametrize("kind", ["lora", "vae"])
def test_bad_loras_and_vaes_through_the_engine(backend, plain, good, tiny_model, kind):
    for bad in _bad_addons(good, kind):
        field = {"loras": ((str(bad), 1.0),)} if kind == "lora" else {"vae": str(bad)}
        refused(lambda field=field: backend.generate(req(tiny_model, **field)), bad)
        still_works(backend, tiny_model, plain)
    # By name from the library, as <lora:name:1> or the VAE's name, the same.
    for way in WAYS:
        bad = good["lib"] / ("Lora" if kind == "lora" else "VAE") / f"{way}-{kind}.safetensors"
        field = {"prompt": f"{PROMPT} <lora:{bad.stem}:1>"} if kind == "lora" else {"vae": bad.stem}
        refused(lambda field=field: backend.generate(req(tiny_model, **field)), bad, bad.stem)
        still_works(backend, tiny_model, plain)


@pytest.mark.parametrize("kind", ["lora", "vae"])
def test_bad_loras_and_vaes_through_the_cli(capsys, routed, backend, plain, good, tiny_model, kind):
    for bad in _bad_addons(good, kind):
        flag = ["--lora", f"{bad}:0.8"] if kind == "lora" else ["--vae", str(bad)]
        cli_refused(capsys, good["root"] / "out", bad, "generate", "--model", tiny_model, "--prompt", PROMPT,
                    "--steps", "1", "--width", "64", "--height", "64", *flag)  # fmt: skip
    still_works(backend, tiny_model, plain)


def _bad_embeddings(good) -> list[Path]:
    folder = good["lib"] / "embeddings"
    out = [_broken(good["embedding"], way, folder / f"emb{way}.safetensors") for way in WAYS]
    for name, tensors in (
        ("embwide", {"emb_params": torch.randn(2, 768)}),  # SD 1.x's real width on the 32-wide tiny model
        ("embxl", {"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}),
    ):
        save_file(tensors, str(folder / f"{name}.safetensors"))
        out.append(folder / f"{name}.safetensors")
    return out


def test_bad_embeddings_named_in_the_prompt(capsys, routed, backend, plain, good, tiny_model):
    fine = backend.generate(req(tiny_model, prompt=f"{PROMPT}, fuzzy"))
    assert fine.extra_params["TI hashes"].startswith("fuzzy: ")
    for bad in _bad_embeddings(good):
        prompt = f"{PROMPT}, {bad.stem}"
        refused(lambda prompt=prompt: backend.generate(req(tiny_model, prompt=prompt)), bad, bad.stem)
        still_works(backend, tiny_model, plain)
        cli_refused(capsys, good["root"] / "out", bad, "generate", "--model", tiny_model, "--prompt", prompt,
                    "--steps", "1", "--width", "64", "--height", "64", name=bad.stem)  # fmt: skip
    np.testing.assert_array_equal(backend.generate(req(tiny_model, prompt=f"{PROMPT}, fuzzy")).images[0],
                                  fine.images[0])  # fmt: skip


# -- upscalers ---------------------------------------------------------------------------------------------------


def _bad_upscalers(good) -> list[Path]:
    folder = good["root"] / "bad-upscalers"
    out = [_broken(good["upscaler"], way, folder / f"{way}-x4.safetensors") for way in WAYS]
    out.append(_broken(good["upscaler"], "random", folder / "random-x4.pth"))
    for other in ("checkpoint", "lora", "vae", "embedding"):
        p = folder / f"{other}-as-upscaler.safetensors"
        shutil.copy(good[other], p)
        out.append(p)
    return out


def test_bad_upscalers(capsys, routed, backend, good, tiny_model, plain):
    image = np.full((16, 16, 3), 100, np.uint8)
    src = good["root"] / "up-in.png"
    Image.fromarray(image).save(src)
    ok = backend.generate(req(tiny_model, mode="upscale", init_image=image, upscale_mode="model", scale=4,
                              upscaler=str(good["upscaler"]), width=None, height=None))  # fmt: skip
    for bad in _bad_upscalers(good):
        r = req(tiny_model, mode="upscale", init_image=image, upscale_mode="model", scale=4, upscaler=str(bad),
                width=None, height=None)  # fmt: skip
        refused(lambda r=r: backend.generate(r), bad)
        cli_refused(capsys, good["root"] / "out", bad, "upscale", "--image", str(src), "--mode", "model",
                    "--upscaler", str(bad), "--scale", "4")  # fmt: skip
        again = backend.generate(ok.request)
        np.testing.assert_array_equal(again.images[0], ok.images[0])
    still_works(backend, tiny_model, plain)


# -- images of every kind, in every mode -------------------------------------------------------------------------

# A 64x64 pattern: the left half "on", the right half "off"; each kind of file draws it its own way.
ON = np.zeros((BIG, BIG), bool)
ON[:, : BIG // 2] = True


def _two(on, off) -> np.ndarray:
    return np.where(ON[:, :, None], np.array(on, np.uint8), np.array(off, np.uint8))


def _image_kind(kind: str, dest: Path) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """Write `kind` at dest; (expected RGB, expected mask, tolerance), both None when it must be refused."""
    if kind == "grey16":  # 16-bit grey: 65535 and 5*257, which Pillow's convert("RGB") clips to 255 both
        Image.fromarray(np.where(ON, 65535, 5 * 257).astype(np.uint16)).save(dest)
        rgb = _two((255,) * 3, (5,) * 3)
        return rgb, rgb[:, :, 0], 0
    if kind == "cmyk-jpeg":  # red and black in CMYK
        Image.fromarray(_two((0, 255, 255, 0), (0, 0, 0, 255)), "CMYK").save(dest, quality=100)
        rgb = _two((255, 0, 0), (0, 0, 0))
        return rgb, np.where(ON, 76, 0).astype(np.uint8), 12  # luminance of red: 76; JPEG blurs the edge
    if kind == "animated-gif":  # its first frame is the pattern, the second its inverse
        first = Image.fromarray(_two((255, 255, 255), (0, 0, 0)))
        second = Image.fromarray(_two((0, 0, 0), (255, 255, 255)))
        first.save(dest, format="GIF", save_all=True, append_images=[second], duration=100, loop=0)
        rgb = _two((255,) * 3, (0,) * 3)
        return rgb, rgb[:, :, 0], 0
    if kind == "rgba":  # opaque white and transparent white: the image is all white, the mask only the left
        Image.fromarray(_two((255, 255, 255, 255), (255, 255, 255, 0)), "RGBA").save(dest)
        return np.full((BIG, BIG, 3), 255, np.uint8), np.where(ON, 255, 0).astype(np.uint8), 0
    if kind == "palette":  # greys: Qt and Pillow weigh the colours of a mask's luminance differently
        Image.fromarray(_two((255, 255, 255), (40, 40, 40))).convert("P", palette=Image.Palette.ADAPTIVE).save(dest)
        return _two((255, 255, 255), (40, 40, 40)), np.where(ON, 255, 40).astype(np.uint8), 0
    if kind == "one-bit":
        Image.fromarray(ON).convert("1").save(dest)
        rgb = _two((255,) * 3, (0,) * 3)
        return rgb, rgb[:, :, 0], 0
    if kind == "not-an-image":
        dest.write_text("this is a note, not a picture\n")
        return None, None, 0
    if kind == "truncated-png":
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (BIG, BIG, 3), np.uint8)).save(dest)
        dest.write_bytes(dest.read_bytes()[: dest.stat().st_size // 2])
        return None, None, 0
    raise ValueError(kind)


IMAGE_KINDS = ("grey16", "cmyk-jpeg", "animated-gif", "rgba", "palette", "one-bit", "not-an-image", "truncated-png")
SUFFIX = {"cmyk-jpeg": ".jpg", "animated-gif": ".gif"}


def _ran(got: np.ndarray, want: np.ndarray, tol: int, what: str) -> None:
    assert got.shape == want.shape, (what, got.shape)
    diff = np.abs(got.astype(int) - want.astype(int))
    if tol:  # a JPEG: close everywhere but its edge, where it rings
        assert diff.mean() <= tol and np.median(diff) <= tol, (what, diff.mean())
    else:
        assert diff.max() == 0, (what, diff.max())
    TALLY["ran"] += 1


ROLES = ("img2img", "inpaint-image", "inpaint-mask", "upscale")


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_images_of_every_kind_in_every_mode_through_the_cli(capsys, routed, good, tiny_model, tmp_path, kind):
    src = tmp_path / f"{kind}{SUFFIX.get(kind, '.png')}"
    rgb, mask, tol = _image_kind(kind, src)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((BIG, BIG, 3), 128, np.uint8)).save(grey)
    square = tmp_path / "square.png"
    Image.fromarray(np.where(ON, 255, 0).astype(np.uint8)).save(square)
    common = ["--model", tiny_model, "--prompt", PROMPT, "--steps", "2", "--seed", "3"]  # 2 x 0.75: one step
    for role in ROLES:
        argv = {
            "img2img": ["img2img", "--image", str(src), *common],
            "inpaint-image": ["inpaint", "--image", str(src), "--mask", str(square), *common],
            "inpaint-mask": ["inpaint", "--image", str(grey), "--mask", str(src), *common],
            "upscale": ["upscale", "--image", str(src), "--mode", "resize", "--scale", "2"],
        }[role]
        out = tmp_path / f"out-{role}"
        if rgb is None:
            cli_refused(capsys, out, src, *argv)
            continue
        TALLY["cases"] += 1
        routed.clear()
        code, stdout, err = cli(capsys, *argv, "--out", str(out), "-q")
        assert code == 0 and "Traceback" not in err, (role, err)
        request = routed[-1]
        if role == "inpaint-mask":
            _ran(request.mask, mask, tol, role)
        else:
            _ran(request.init_image, rgb, tol, role)
        saved = Path(stdout.strip())
        side = 2 * BIG if role == "upscale" else BIG
        with Image.open(saved) as done:  # written whole: it decodes, at the size it should have
            done.load()
            assert done.size == (side, side)
        assert [p.name for p in out.iterdir()] == [saved.name]  # no temporary file left


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_steps_times_strength_below_one_is_refused_not_an_empty_run(capsys, routed, tiny_model, tmp_path, mode):
    """Found by the image cases: 1 step at strength 0.75 ran no step, saved nothing and exited 0."""
    src = tmp_path / "in.png"
    Image.fromarray(np.full((BIG, BIG, 3), 90, np.uint8)).save(src)
    Image.fromarray(np.where(ON, 255, 0).astype(np.uint8)).save(tmp_path / "m.png")
    extra = ["--mask", str(tmp_path / "m.png")] if mode == "inpaint" else []
    err = cli_refused(capsys, tmp_path / "out", src, mode, "--image", str(src), *extra, "--model", tiny_model,
                      "--prompt", PROMPT, "--steps", "1", name="1 steps at denoising strength 0.75 run no step")  # fmt: skip
    assert "use more steps or a higher strength" in err


class _Messages:
    """What the window's session needs to read a file: its message signal, its document (a stand-in)."""

    def __init__(self, size=(BIG, BIG)):
        self.lines: list[tuple[str, str]] = []
        self.message = self
        self.mask = None
        self.document = self
        self._size = size

    def emit(self, text, level) -> None:
        self.lines.append((text, level))

    def has_image(self) -> bool:
        return True

    def size(self):
        return self._size

    def set_mask(self, mask, label) -> None:
        self.mask = mask

    def _read_image_file(self, path):
        from studio.session.core import Session

        return Session._read_image_file(self, path)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def qapp():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_images_of_every_kind_through_the_window(qapp, tmp_path, kind):
    """The window's reader (Qt): File > Open as the canvas image, File > Load mask as the mask."""
    from studio.qimage import qimage_to_array
    from studio.session.core import Session

    src = tmp_path / f"{kind}{SUFFIX.get(kind, '.png')}"
    rgb, mask, tol = _image_kind(kind, src)
    before = _digest(src)
    for role in ("image", "mask"):
        TALLY["cases"] += 1
        s = _Messages()
        if role == "image":
            image = Session._read_image_file(s, src)  # type: ignore[arg-type]
            ok = image is not None
        else:
            ok = Session.load_mask(s, src)  # type: ignore[arg-type]
        if rgb is None:
            assert not ok and len(s.lines) == 1 and s.lines[0][1] == "error", s.lines
            _check_one_line(s.lines[0][0], src.name)
            TALLY["clean"] += 1
        elif role == "image":
            _ran(qimage_to_array(image), rgb, tol, "window image")
        else:
            assert ok, s.lines
            _ran(s.mask, mask, tol, "window mask")
    assert _digest(src) == before


# -- a mask of another size ----------------------------------------------------------------------------------------


def test_a_mask_of_another_size(capsys, routed, qapp, backend, tiny_model, tmp_path):
    """The CLI refuses it with one line (its help: "the mask, the image's size"); the engine too; the window's
    Load mask scales it to the image and says so (README, "Painting a mask")."""
    from studio.session.core import Session

    image, small = tmp_path / "image.png", tmp_path / "small-mask.png"
    Image.fromarray(np.full((BIG, BIG, 3), 90, np.uint8)).save(image)
    Image.fromarray(np.where(ON[::2, ::2], 255, 0).astype(np.uint8)).save(small)
    err = cli_refused(capsys, tmp_path / "out", small, "inpaint", "--image", str(image), "--mask", str(small),
                      "--model", tiny_model, "--prompt", PROMPT, "--steps", "1", name="mask")  # fmt: skip
    assert "32x32" in err and "64x64" in err and not routed  # refused before any work
    r = req(tiny_model, mode="inpaint", init_image=np.full((BIG, BIG, 3), 90, np.uint8),
            mask=np.full((32, 32), 255, np.uint8), width=None, height=None)  # fmt: skip
    refused(lambda: backend.generate(r), small, "mask")
    TALLY["cases"] += 1
    s = _Messages()
    assert Session.load_mask(s, small)  # type: ignore[arg-type]
    assert s.mask.shape == (BIG, BIG) and s.mask[10, 5] == 255 and s.mask[10, 60] == 0
    assert "it was 32×32: scaled to the image's 64×64" in s.lines[-1][0]
    TALLY["clean"] += 1


def test_the_tally():
    """Last: the counts of the whole file (run alone, there are none)."""
    print("\nfile faults:", ", ".join(f"{k} {v}" for k, v in sorted(TALLY.items())))
    assert TALLY["tracebacks"] == 0 and TALLY["hangs"] == 0 and TALLY["lost"] == 0 and TALLY["payloads"] == 0

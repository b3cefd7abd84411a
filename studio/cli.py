"""The command-line interface: `studio generate | img2img | inpaint | outpaint | upscale | samplers | info | ...`.

stdout carries only results (paths, names, parameters); messages go to stderr. Bad input exits with
code 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .core.errors import OUT_OF_MEMORY, EngineError, RequestError, first_line, is_out_of_memory

EXIT_BAD_INPUT = 2
UPSCALE_METHODS = ("resize", "model", "diffusion", "latent")  # studio.core.requests.UPSCALE_MODES
UPSCALE_STRENGTH = {"diffusion": 0.3, "latent": 1.0}  # --strength when not given


class OneLineParser(argparse.ArgumentParser):
    """argparse, but its own errors are one line on stderr and exit 2 (no usage block)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"studio: error: {message}\n")


def _add_generation_options(p: argparse.ArgumentParser, upscale: bool = False) -> None:
    from .core.fewstep import PRESETS
    from .core.samplers import DEFAULT_SAMPLER, DEFAULT_SCHEDULE, SCHEDULE_NAMES

    p.add_argument("--model", help="a checkpoint (.safetensors, .ckpt) or a diffusers folder (default: the built-in "
                   "model; with --server, the server's file named for its URL in the settings' server_models, else "
                   "its first checkpoint, said on stderr)")  # fmt: skip
    if upscale:
        p.add_argument("--prompt", default=None, help="what the image shows (diffusion and latent upscales); a "
                       "resize or model upscale writes it in the metadata (default: the source PNG's)")  # fmt: skip
    else:
        p.add_argument("--prompt", required=True, help="what to draw")
    p.add_argument("--negative", default=None if upscale else "", help="what to avoid")
    # Defaults None: a --preset fills what is not given (_sampling); DEFAULT_SAMPLER etc. otherwise.
    p.add_argument("--sampler", default=None, help=f"sampler name (see `studio samplers`; default {DEFAULT_SAMPLER})")
    p.add_argument("--schedule", default=None, help=f"{', '.join(SCHEDULE_NAMES)} (default {DEFAULT_SCHEDULE})")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 20)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default 7)")
    p.add_argument("--preset", default=None, metavar="NAME", help="few-step model settings (sampler, schedule, steps, "
                   "CFG; an option given beside it wins): " + "; ".join(p.label for p in PRESETS.values()))  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="default: a random seed, written in the metadata")
    if upscale:
        p.add_argument("--width", type=int, default=None, help="the output width, with --height (instead of --scale)")
        p.add_argument("--height", type=int, default=None, help="the output height, with --width")
    else:
        p.add_argument("--width", type=int, default=None, help="multiple of 8 (default: the model's native size)")
        p.add_argument("--height", type=int, default=None, help="multiple of 8 (default: the model's native size)")
        p.add_argument("--batch", type=int, default=1, help="images per run; image i uses seed + i")
        p.add_argument("--subseed", type=int, default=None, help="A1111's variation seed (default: random when "
                       "--subseed-strength is above 0); image i of a batch uses it + i, all with the seed itself")
        p.add_argument("--subseed-strength", type=float, default=0.0, metavar="X",
                       help="variation strength 0-1: the seed's noise slerped toward the variation seed's (text to "
                            "image; default 0: off)")  # fmt: skip
        p.add_argument("--seed-resize-from", type=_size_arg, default=(0, 0), metavar="WxH",
                       help="make the seed's noise at this size and paste it centred (A1111's resize seed from: "
                            "a composition survives a size change)")  # fmt: skip
        p.add_argument("--speed", choices=("exact", "fast", "turbo"), default="exact",
                       help="exact (default): plain diffusers' pixels; fast: bf16/fp16 U-Net and decode where the "
                            "hardware has it (a few 1/255 off); turbo: the U-Net compiled with OpenVINO (the first "
                            "run of a model converts it); written in the PNG as Speed")  # fmt: skip
        p.add_argument("--prepare-exact", action="store_true",
                       help="with --speed exact on a CPU: convert the U-Net for OpenVINO f32 first where it is not "
                            "yet (once per model and LoRA set: minutes, gigabytes on disk; then 1.16x (idle machine) to "
                            "1.6x (busy) per step at 512 px, at exact's pixels)")  # fmt: skip
    p.add_argument("--clip-skip", type=int, default=1, help="skip the text encoder's last layers (A1111's; 1 = none)")
    p.add_argument("--vae", default="", help="a VAE file, or the name of one in the model folders")
    p.add_argument("--lora", action="append", default=[], metavar="NAME:WEIGHT",
                   help="a LoRA (file or name) and its weight; repeatable; or <lora:name:0.8> in the prompt")  # fmt: skip
    if not upscale:
        p.add_argument("--control", action="append", default=[], metavar="IMAGE:model=PATH[,weight=W,...]",
                       help="a ControlNet and its control image (used as it is: an edge map, a scribble...); options "
                            "weight, start, end (fractions of the steps), mode (balanced, prompt, control: A1111's "
                            "control modes), module (what made the image, for the metadata); repeatable")  # fmt: skip
        p.add_argument("--save-control", action="store_true",
                       help="save each control image beside the picture as <name>.control0.png")
    p.add_argument("--prediction", choices=("auto", "epsilon", "v_prediction"), default="auto",
                   help="SD 2.x models: auto detects epsilon or v-prediction; set it when a model looks wrong")  # fmt: skip
    if not upscale:
        p.add_argument("--deep-cache", type=int, default=0, metavar="N",
                       help="reuse the U-Net's deep features: the full U-Net every N steps (2-5); interval 3 measured "
                            "about 3x faster, and the picture changes (README: Speed tricks); off below 15 steps "
                            "(default 0: off)")  # fmt: skip
    p.add_argument("--attention-slicing", action="store_true", help="less GPU memory for attention")
    p.add_argument("--vae-tiling", action="store_true", help="decode large images in tiles (less memory)")
    p.add_argument("--tiny-decode", action="store_true",
                   help="decode the final image with the model's tiny decoder (TAESD) when it has one: fast, approximate")
    p.add_argument("--offload", choices=("none", "model", "sequential"), default="none",
                   help="CPU offload on a GPU: model (moderate) or sequential (least memory, slowest)")  # fmt: skip
    p.add_argument("--out", default=None, help="output folder (default: the studio's output folder)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or mps")
    p.add_argument("--server", default=None, metavar="URL",
                   help="run on a ComfyUI server (e.g. http://127.0.0.1:8188) instead of this machine")  # fmt: skip
    p.add_argument("--token", default=None, help="a bearer token for the server's proxy (or STUDIO_SERVER_TOKEN)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.add_argument("--timings", action="store_true", help="print where the time went (imports, load, steps, decode, save)")
    p.add_argument("--no-server", action="store_true", help="run in this process, not in the warm background engine "
                   "(`studio serve`; STUDIO_NO_SERVER=1 does the same)")  # fmt: skip


def _add_inpaint_options(p: argparse.ArgumentParser, mask_blur: int) -> None:
    p.add_argument("--mask-blur", type=int, default=mask_blur, help=f"px of Gaussian feather (default {mask_blur})")
    p.add_argument("--fill", choices=("original", "fill", "noise"), default="original",
                   help="what the masked area starts from (A1111's masked content)")  # fmt: skip


class _Unlisted:
    """Registers commands on `sub` that the main help leaves out of its list (argparse lists only the commands added
    with a help): their (name, help) pairs are kept for a section of their own."""

    def __init__(self, sub: argparse._SubParsersAction) -> None:
        self.sub = sub
        self.listed: list[tuple[str, str]] = []

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        text = kwargs.pop("help", "")
        self.listed.append((name, text))
        kwargs.setdefault("description", text)
        return self.sub.add_parser(name, **kwargs)


def _section(title: str, commands: list[tuple[str, str]]) -> str:
    width = max((len(name) for name, _ in commands), default=0) + 2
    return "\n".join([f"{title}:", *(f"  {name:<{width}}{text}" for name, text in commands)])


def _add_hires_options(p: argparse.ArgumentParser) -> None:
    """A1111's hires fix: on when --hires-scale is given."""
    h = p.add_argument_group("hires fix", "generate at the model's size, upscale, then a second pass (A1111's)")
    h.add_argument("--hires-scale", type=float, default=None, metavar="X",
                   help="turn the hires fix on: upscale the first image by X, 1 to 4 (A1111's Hires upscale)")
    h.add_argument("--hires-upscaler", default="Latent", metavar="NAME",
                   help="Latent (default), 'Latent (bicubic)', 'Latent (nearest-exact)'... (A1111's names), "
                        "Lanczos, or an upscaler model file (ESRGAN, SwinIR...)")
    h.add_argument("--hires-steps", type=int, default=0, help="steps of the second pass (default 0: as --steps)")
    h.add_argument("--hires-strength", type=float, default=0.7,
                   help="denoising strength of the second pass, 0 < x <= 1 (default 0.7)")


def hires_fields(args: argparse.Namespace) -> dict:
    """The request's hires fields from the hires options (none without --hires-scale)."""
    if getattr(args, "hires_scale", None) is None:
        return {}
    return dict(hires_fix=True, hires_scale=args.hires_scale, hires_upscaler=args.hires_upscaler,
                hires_steps=args.hires_steps, hires_strength=args.hires_strength)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="studio",
        description="Latent Studio: generate images offline with latent diffusion models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the epilog's command list keeps its lines
    )
    parser.add_argument("--version", action="version", version=f"Latent Studio {__version__}",
                        help="print the version and exit")  # fmt: skip
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser, metavar="COMMAND",
                                help="`studio COMMAND --help` for its options")  # fmt: skip

    g = sub.add_parser("generate", help="text to image")
    _add_generation_options(g)
    _add_hires_options(g)
    from .cli_branch import add_options as add_branch_options

    add_branch_options(g)
    for action in g._actions:  # a branch takes them from its parent: given, they are what it changes
        if action.dest in ("prompt", "negative"):
            action.required, action.default = False, None
    i = sub.add_parser("img2img", help="image to image")
    _add_generation_options(i)
    i.add_argument("--image", required=True, help="the input image (PNG, JPEG, WebP)")
    i.add_argument("--strength", type=float, default=0.75, help="denoising strength, 0 < x <= 1")

    gr = sub.add_parser("grid", help="a comparison grid (A1111's X/Y/Z plot): one image per combination of values")
    _add_generation_options(gr)
    _add_hires_options(gr)
    for axis in ("x", "y", "z"):
        gr.add_argument(f"--{axis}", default=None, metavar="KIND: VALUES",
                        help=f"the {axis.upper()} axis, e.g. \"CFG: 4,7,10\", \"Steps: 10-30 (+10)\", \"Sampler: Euler "
                             "a,DDIM\", \"Prompt S/R: cat,dog\" (kinds: Seed, Var. seed, Var. strength, Steps, CFG "
                             "Scale, Sampler, Schedule type, Prompt S/R, LoRA weight, Denoising)")  # fmt: skip
    gr.add_argument("--z-stacked", action="store_true", help="the Z grids stacked in one image (default: one each)")
    gr.add_argument("--image", default=None, help="an input image: the cells run image to image")
    gr.add_argument("--strength", type=float, default=0.75, help="denoising strength with --image")

    ip = sub.add_parser("inpaint", help="repaint the masked area of an image")
    _add_generation_options(ip)
    ip.add_argument("--image", required=True, help="the input image (PNG, JPEG, WebP)")
    ip.add_argument("--mask", required=True, help="the mask, the image's size: white (luminance) = repaint")
    ip.add_argument("--strength", type=float, default=0.75, help="denoising strength, 0 < x <= 1")
    _add_inpaint_options(ip, mask_blur=4)
    ip.add_argument("--area", choices=("whole", "masked"), default="whole",
                    help="inpaint the whole picture, or only the masked area at the working size")  # fmt: skip
    ip.add_argument("--padding", type=int, default=32, help="px around the masked area (--area masked)")

    op = sub.add_parser("outpaint", help="extend an image on its sides and paint the new area")
    _add_generation_options(op)
    op.add_argument("--image", required=True, help="the input image (PNG, JPEG, WebP)")
    for side in ("left", "right", "top", "bottom"):
        op.add_argument(f"--{side}", type=int, default=0, help=f"px to add on the {side}")
    op.add_argument("--overlap", type=int, default=16, help="px of the old image repainted along the seam")
    op.add_argument("--strength", type=float, default=1.0, help="denoising strength, 0 < x <= 1")
    _add_inpaint_options(op, mask_blur=0)

    up = sub.add_parser("upscale", help="enlarge an image: Lanczos, an upscaler model, diffusion or the x4 upscaler")
    _add_generation_options(up, upscale=True)
    up.add_argument("--image", required=True, help="the input image (PNG, JPEG, WebP)")
    up.add_argument("--scale", type=float, default=2.0, help="the factor, 1 to 8 (default 2)")
    up.add_argument("--mode", choices=UPSCALE_METHODS, default="model",
                    help="resize: Lanczos; model: an --upscaler model (the built-in SwinIR x4 without one); diffusion: "
                         "resize, then tiled img2img with --model; latent: an x4 upscaler --model (default model)")  # fmt: skip
    up.add_argument("--upscaler", default=None, help="an upscaler model file (ESRGAN, SwinIR...): --mode model, "
                    "and the resize step of --mode diffusion (default: Lanczos)")  # fmt: skip
    up.add_argument("--tile", type=int, default=0, help="tile size in output px (default: the model's own)")
    up.add_argument("--overlap", type=int, default=0, help="tile overlap in output px (default: automatic)")
    up.add_argument("--no-keep-composition", dest="keep_composition", action="store_false",
                    help="--mode diffusion over several tiles: keep each tile's repaint on the resized picture's "
                         "colours, so the model paints new texture (grain, pores) into flat areas too (A1111's SD "
                         "upscale); default: each tile adds only the detail that sharpens")  # fmt: skip
    up.add_argument("--strength", type=float, default=None,
                    help="denoising strength, 0 < x <= 1 (default 0.3 for diffusion; 1 for latent: the x4 "
                         "upscaler from noise)")  # fmt: skip

    models = sub.add_parser("models", help="list every model file: checkpoints, VAEs, LoRAs, embeddings, upscalers")
    models.add_argument("--folder", action="append", default=[],
                        help="also scan this folder (an A1111 or ComfyUI models folder); repeatable")  # fmt: skip
    models.add_argument("--hashes", action="store_true", help="also print A1111's short hashes (reads each file once)")
    models.add_argument("--add", action="append", default=[], metavar="DIR",
                        help="add a folder to the settings for good (the window and every command use it)")  # fmt: skip
    sub.add_parser("samplers", help="list the sampler names")
    sub.add_parser("schedules", help="list the schedule names")
    info = sub.add_parser("info", help="print the generation parameters stored in an image")
    info.add_argument("image", help="a PNG, JPEG or WebP")
    serve = sub.add_parser("serve", help="keep a warm engine running: later commands skip torch's start and the load")
    serve.add_argument("--idle", type=float, default=None,
                       help="exit after this many seconds without a request (default 600 or STUDIO_SERVER_IDLE; 0: never)")  # fmt: skip
    serve.add_argument("--stop", action="store_true", help="stop the running engine")
    serve.add_argument("--status", action="store_true", help="say whether an engine runs, and its process id")
    serve.set_defaults(func=_serve)
    tiny = sub.add_parser("make-tiny-model", help="write a tiny random-weight model folder (tests, demos)")
    tiny.add_argument("path", help="the folder to write (an upscale model: the file)")
    tiny.add_argument("--kind", choices=("txt2img", "inpaint", "upscale"), default="txt2img",
                      help="the pipeline to write (default txt2img)")  # fmt: skip
    tiny.add_argument("--seed", type=int, default=0, help="the random weights' seed (default 0)")

    epilog = ["With no command, `studio [--model PATH] [--output-dir DIR] [--demo]` opens the window."]
    try:  # training commands, when that package is present: a section of their own, not among the artist's
        from .training.cli import add_subcommands
    except ImportError:
        pass
    else:
        training = _Unlisted(sub)
        add_subcommands(training)
        epilog.insert(0, _section("training commands (the built-in models)", training.listed))
    parser.epilog = "\n\n".join(epilog)
    return parser


def command_names(parser: argparse.ArgumentParser | None = None) -> tuple[str, ...]:
    """The subcommands `build_parser` registers, in order (the training ones too, when that package is there)."""
    action = _commands_action(parser or build_parser())
    return tuple(action.choices) if action else ()


def _commands_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def unknown_command(word: str, parser: argparse.ArgumentParser | None = None) -> str | None:
    """The one-line error for a first word that is no command (a typo like `inpant`), else None. It names the
    artist's commands (the training ones are in `studio --help`) and the closest command when one is close."""
    import difflib

    if word.startswith("-"):
        return None
    parser = parser or build_parser()
    commands = command_names(parser)
    if word in commands:
        return None
    action = _commands_action(parser)
    listed = [a.dest for a in action._get_subactions()] if action else []  # the commands added with a help
    line = f"studio: error: unknown command {word!r} (commands: {', '.join(listed or commands)})"
    close = difflib.get_close_matches(word, commands, n=1)
    return f"{line}; did you mean {close[0]!r}?" if close else line


def _read_image(path: str, what: str = "image"):
    """An input image as HxWx3 uint8 (what="mask": HxW, 255 = repaint), any mode (16-bit grey scaled, not clipped);
    RequestError when it is missing, unreadable or too large."""
    from .core.imagefile import read_image

    return read_image(path, what)


_line_open = False  # a progress line is on stderr without its newline: an error starts a new line
_split: dict[str, float] = {}  # --timings: where the command's time went (t0: main() began)


def _progress(quiet: bool):
    if quiet:
        return None

    def on_step(info) -> None:
        global _line_open
        last = info.step == info.total and (not info.parts or info.part == info.parts or info.stage == "cell")
        end = "\n" if last else ""
        print(f"\r{info.label()}  {info.elapsed:.1f}s", end=end, file=sys.stderr, flush=True)
        _line_open = not last

    return on_step


def _say(line: str) -> None:
    """One line on stderr, on a line of its own (after an open progress line)."""
    global _line_open
    print(("\n" if _line_open else "") + line, file=sys.stderr, flush=True)
    _line_open = False


def _request(args: argparse.Namespace, mode: str, **fields):
    """The GenerateRequest of a generation command: the options they all share, plus this mode's fields."""
    from .core import GenerateRequest

    shared = dict(prompt=args.prompt, negative_prompt=args.negative, model=args.model, mode=mode, **_sampling(args),
                  seed=args.seed,
                  width=args.width, height=args.height, clip_skip=args.clip_skip, vae=args.vae,
                  loras=tuple(_lora_arg(a) for a in args.lora), prediction=args.prediction,
                  tiny_decode=getattr(args, "tiny_decode", False),
                  preview="none")  # fmt: skip  # the CLI shows no previews: none are made or fetched
    if getattr(args, "speed", None):
        shared["speed"] = args.speed
    if getattr(args, "deep_cache", 0):
        shared["deep_cache"] = args.deep_cache
    if getattr(args, "prepare_exact", False):
        shared["prepare_exact"] = True
    shared.update(_variation(args))
    if getattr(args, "control", None):
        shared["controls"] = tuple(_control_arg(a) for a in args.control)
    return GenerateRequest.from_fields(**{**shared, **fields})


def _size_arg(text: str) -> tuple[int, int]:
    """'512x768' -> (512, 768), for argparse (its error is one line)."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.strip().isdigit() or not h.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use WIDTHxHEIGHT, e.g. 512x512")
    return int(w), int(h)


def _variation(args: argparse.Namespace) -> dict:
    if not hasattr(args, "subseed_strength"):
        return {}
    w, h = args.seed_resize_from
    return dict(subseed=args.subseed, subseed_strength=args.subseed_strength, seed_resize_from_w=w,
                seed_resize_from_h=h)  # fmt: skip


_CONTROL_MODE_WORDS = {"balanced": "Balanced", "prompt": "My prompt is more important",
                       "control": "ControlNet is more important"}  # fmt: skip


def _control_arg(text: str):
    """IMAGE:model=PATH[,weight=W,start=S,end=E,mode=M,module=NAME] -> a ControlSpec (its image read now)."""
    from .core import RequestError
    from .core.control import CONTROL_MODES, ControlSpec

    image, sep, rest = text.partition(":model=")
    if not sep or not image or not rest:
        raise RequestError(f"--control {text!r}: write IMAGE:model=PATH[,weight=W,start=S,end=E,mode=M,module=NAME]")
    model, *options = rest.split(",")
    fields: dict = {"model": model}
    for opt in options:
        key, eq, value = opt.partition("=")
        key = key.strip().lower()
        if not eq or key not in ("weight", "start", "end", "mode", "module"):
            raise RequestError(f"--control: unknown option {opt!r} (weight, start, end, mode or module)")
        if key in ("weight", "start", "end"):
            try:
                fields[key] = float(value)
            except ValueError:
                raise RequestError(f"--control: {key} must be a number, got {value!r}") from None
        elif key == "mode":
            mode = _CONTROL_MODE_WORDS.get(value.strip().lower(), value.strip())
            if mode not in CONTROL_MODES:
                raise RequestError(f"--control: mode {value!r}: use balanced, prompt or control")
            fields["mode"] = mode
        else:
            fields["module"] = value.strip().lower()
    return ControlSpec(image=_read_image(image, "control image"), **fields)


def _sampling(args: argparse.Namespace) -> dict:
    """Sampler, schedule, steps and CFG: the options given, else the --preset's, else the defaults."""
    from .core.fewstep import resolve_preset
    from .core.samplers import DEFAULT_SAMPLER, DEFAULT_SCHEDULE

    base: dict = {"sampler": DEFAULT_SAMPLER, "schedule": DEFAULT_SCHEDULE, "steps": 20, "cfg": 7.0}
    if args.preset:
        base.update(resolve_preset(args.preset).fields())
    return {k: v if (v := getattr(args, k)) is not None else base[k] for k in base}


def _lora_arg(text: str) -> tuple[str, float]:
    """NAME[:WEIGHT] (the name may be a path; the weight is what follows the last colon, if it is a number)."""
    name, sep, weight = text.rpartition(":")
    if sep and name:
        try:
            return name, float(weight)
        except ValueError:
            pass
    return text, 1.0


def _check_device(device: str | None, args: argparse.Namespace | None = None) -> None:
    """An unknown --device, or one this PyTorch lacks, refused before any model is read: the name without torch; what
    this PyTorch has here, or, on the warm engine, by that engine (the last check: other bad input answers first)."""
    import os
    import re

    name = (device or os.environ.get("STUDIO_DEVICE") or "").strip().lower()
    if name and not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise RequestError(f"Unknown device {name}: use cpu, cuda or mps")
    if name and not (args is not None and _warm_wanted(args)):
        from .engine.engine import pick_device

        pick_device(device)


class _Stop:
    """SIGINT and SIGTERM during a run: the run's `cancel` is set (the local engine stops at its next step, a server
    job is interrupted) and a save under way finishes; then the CLI exits 128 + the signal. A second signal stops at
    once (KeyboardInterrupt: the atomic writer still removes its temporary file)."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        import threading

        self.cancel = threading.Event()
        self.signum = 0
        self._old: dict = {}

    def __enter__(self) -> _Stop:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        self.cancel.set()

    def exit_code(self) -> int:
        import signal

        _say("studio: terminated" if self.signum == signal.SIGTERM else "studio: interrupted")
        return 128 + int(self.signum)


def _output_folder(args: argparse.Namespace) -> Path:
    from .core.output import check_output_dir
    from .paths import default_output_dir

    return check_output_dir(Path(args.out) if args.out else default_output_dir())


def _generate_and_save(args: argparse.Namespace, request, extra: dict[str, str] | None = None) -> int:
    """Torch only from here on (or a server, or the warm engine): the request runs, each path goes to stdout as it is written.
    `extra`: metadata keys for the saved files (studio.core.metadata.parameters_for)."""
    from .core.output import save_result

    out = _output_folder(args)  # before the work: a run is never wasted on a folder that takes no file
    with _Stop() as stop:
        result = _run_request(args, request, stop.cancel)
        if stop.signum or result.cancelled:
            return stop.exit_code()
        if result.notice:  # the run went otherwise than asked (fast ran as exact on this CPU): say why
            _say(f"studio: {result.notice}")
        for note in getattr(result, "notes", ()):
            _say(f"studio: {note}")
        result.extra_params.update(extra or {})
        if getattr(request, "tiny_decode", False) and "Tiny decode" not in result.extra_params:
            _say("studio: no tiny decoder for this model: full decode used")

        def saved(path: Path) -> bool:
            if getattr(args, "keep_latents", False) and result.step_states:  # for a later branch (cli_branch)
                from .core.branch import save_sidecar

                i = len(kept)
                save_sidecar(path, [s.image(i) for s in result.step_states])
            kept.append(path)
            print(path, flush=True)
            return not stop.signum  # a signal during that save: it finished, no other starts

        t_save = time.perf_counter()
        kept: list[Path] = []
        paths = save_result(result, out, __version__, on_saved=saved)
        if getattr(args, "save_control", False):
            from .core.output import save_control_images

            for path in save_control_images(result, paths):
                print(path, flush=True)
        if getattr(args, "timings", False):
            _say(_timings_line(result.timings, time.perf_counter() - t_save))
        if stop.signum:
            return stop.exit_code()
    return 0


def _warm_wanted(args: argparse.Namespace) -> bool:
    """Whether the request goes to the warm engine (studio.serve): not with --server, --no-server or
    STUDIO_NO_SERVER=1, nor where there are no local sockets."""
    import socket

    from .serve.runtime import disabled

    return not (getattr(args, "server", None) or getattr(args, "no_server", True) or disabled()
                or not hasattr(socket, "AF_UNIX")
                or getattr(args, "branch_from", None) or getattr(args, "keep_latents", False))  # fmt: skip


def _on_warm_engine(args: argparse.Namespace, request, cancel):
    """The request's result from the warm engine (started on first use), None when it is not to be used or cannot be
    (said in one line): this process then runs it."""
    if not _warm_wanted(args):
        return None
    from .serve import client, runtime

    options = dict(device=args.device, memory=(args.attention_slicing, args.vae_tiling, args.offload),
                   model_folders=[str(f) for f in model_folders()[1:]])  # fmt: skip
    try:
        result, split = client.generate(request, options, _progress(args.quiet), cancel, None if args.quiet else _say)
    except runtime.Unavailable as e:
        if not args.quiet:
            _say(f"studio: running in this process ({e})")
        return None
    _split.update(split)
    return result


def _timings_line(timings: dict[str, float], save: float) -> str:
    """'studio: timings (warm engine): start 0.01 s, imports 0.00 s, load 0.00 s, steps 0.45 s, ...'."""
    parts = {"start": _split.get("start"), "imports": _split.get("imports", 0.0), "load": timings.get("load"),
             "steps": timings.get("sample"), "decode": timings.get("decode"), "save": save,
             "total": time.perf_counter() - _split["t0"]}  # fmt: skip
    where = "warm engine" if "start" in _split else "this process"
    return f"studio: timings ({where}): " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items() if v is not None)


def _serve(args: argparse.Namespace) -> int:
    from .serve import client, runtime

    if not (args.stop or args.status):
        from .serve.server import serve

        return serve(args.idle)
    try:
        reply = client.call("stop" if args.stop else "ping")
    except runtime.Unavailable as e:
        print(f"studio: {e}", file=sys.stderr)
        return 1 if args.status else 0
    what = "stopping" if args.stop else f"running, {reply.get('jobs', 0)} jobs done"
    print(f"studio: background engine {what} (pid {reply.get('pid')})", file=sys.stderr)
    return 0


def _run_request(args: argparse.Namespace, request, cancel):
    """The request on the server the artist named, or on this machine; a set `cancel` ends it early."""
    if getattr(args, "server", None):
        import os

        from .backends.comfyui.backend import ComfyUIBackend

        backend = ComfyUIBackend(args.server, args.token or os.environ.get("STUDIO_SERVER_TOKEN", ""))
        try:
            backend.start()
            request = _server_model(backend, request)
            result = backend.generate(request, on_step=_progress(args.quiet), cancel=cancel)
        finally:
            backend.close()
    elif (warm := _on_warm_engine(args, request, cancel)) is not None:
        result = warm
    else:
        from .backends.local import LocalBackend
        from .core.memory import MemoryOptions

        if args.timings and request.mode != "upscale":  # imports timed apart from the load
            from .serve.server import import_engine

            _split["imports"] = import_engine()
        memory = MemoryOptions(args.attention_slicing, args.vae_tiling, args.offload)
        local = LocalBackend(device=args.device, model_folders=model_folders()[1:], memory=memory)
        try:
            result = local.generate(request, on_step=_progress(args.quiet), cancel=cancel)
            if local.info().notice:  # an engine setting refused (STUDIO_COMPILE off CUDA)
                _say(f"studio: {local.info().notice}")
        finally:
            local.close()
    return result


def _server_model(backend, request):
    """With no --model: the settings' default for this server, else its first checkpoint; either is said."""
    from .settings import Settings

    if request.model or (request.mode == "upscale" and request.upscale.method != "diffusion"):
        return request
    default = Settings.load().server_models.get(backend.url, "")
    name = backend.checkpoint(default or None)
    why = "the settings' server_models" if default else "its first; the settings' server_models picks another"
    print(f"studio: model {name} on the server ({why})", file=sys.stderr, flush=True)  # even with -q: not progress
    return request.replace(model=name)


def _run_generation(args: argparse.Namespace, mode: str) -> int:
    init = _read_image(args.image) if mode in ("img2img", "inpaint", "outpaint") else None
    inpaint: dict = {}
    if mode == "inpaint":
        inpaint.update(mask=_read_image(args.mask, "mask"), inpaint_area=args.area, inpaint_padding=args.padding)
    elif mode == "outpaint":
        from .core.inpaint import outpaint_canvas

        init, mask = outpaint_canvas(init, args.left, args.top, args.right, args.bottom, overlap=args.overlap)
        inpaint.update(mask=mask, inpaint_area="whole")
        mode = "inpaint"
    if mode == "inpaint":
        inpaint.update(mask_blur=args.mask_blur, masked_content=args.fill)
    request = _request(args, mode, batch=args.batch, strength=getattr(args, "strength", 0.75), init_image=init,
                       **inpaint, **hires_fields(args))  # fmt: skip
    request.validate()  # before torch is imported: bad input answers at once
    from .core.samplers import scheduler_spec

    if not args.server:  # a server checks its own names and files
        scheduler_spec(request.sampler, request.schedule)
        if args.model is not None and not Path(args.model).exists():
            raise EngineError(f"Model not found: {args.model}")
        _check_device(args.device, args)
    return _generate_and_save(args, request)


def _run_grid(args: argparse.Namespace) -> int:
    """`studio grid`: every cell saved (its path on stdout) as it finishes, then the labelled grid image(s)."""
    from .core import grid as gridlib
    from .core.output import save_result

    axes = [gridlib.parse_axis_spec(a) for a in (args.x, args.y, args.z) if a]
    if not axes:
        raise EngineError("A grid needs an axis: --x \"CFG: 4,7,10\" (and --y, --z)")
    init = _read_image(args.image) if args.image else None
    base = _request(args, "img2img" if init is not None else "txt2img", batch=1, strength=args.strength,
                    init_image=init, **hires_fields(args))  # fmt: skip
    grid = gridlib.plan(base, axes, stacked=args.z_stacked)  # every cell checked before torch is imported
    if not args.server:
        if args.model is not None and not Path(args.model).exists():
            raise EngineError(f"Model not found: {args.model}")
        _check_device(args.device, args)
    out = _output_folder(args)
    generate, close = _cell_runner(args)
    try:
        with _Stop() as stop:
            def on_cell(i: int, result) -> None:
                for path in save_result(result, out, __version__):
                    print(path, flush=True)

            outcome = gridlib.run(grid, generate, _progress(args.quiet), stop.cancel, on_cell)
            if outcome.cancelled or stop.signum:
                return stop.exit_code()
            for path in save_result(gridlib.grid_result(grid, outcome), out, __version__):
                print(path, flush=True)
    finally:
        close()
    return 0


def _cell_runner(args: argparse.Namespace):
    """(generate(request, on_step, cancel), close) for a grid's cells: one backend for all of them (a server, the warm
    engine, or one loaded in this process), so the model loads once."""
    if getattr(args, "server", None) or _warm_wanted(args):
        return (lambda r, on_step, cancel: _run_request(args, r, cancel)), (lambda: None)
    from .backends.local import LocalBackend
    from .core.memory import MemoryOptions

    local = LocalBackend(device=args.device, model_folders=model_folders()[1:],
                         memory=MemoryOptions(args.attention_slicing, args.vae_tiling, args.offload))  # fmt: skip
    return (lambda r, on_step, cancel: local.generate(r, on_step=on_step, cancel=cancel)), local.close


def _run_upscale(args: argparse.Namespace) -> int:
    from .paths import BUILTIN_MODEL

    if (args.width is None) != (args.height is None):
        raise RequestError("Give --width and --height together (or --scale)")
    if args.upscaler and args.mode not in ("model", "diffusion"):
        raise RequestError(f"--upscaler is for --mode model or diffusion, not {args.mode}")
    if not args.keep_composition and args.mode != "diffusion":
        raise RequestError(f"--no-keep-composition is for --mode diffusion, not {args.mode}")
    init = _read_image(args.image)
    builtin = args.mode == "model" and args.upscaler is None and not args.server  # the default keeps the picture
    if builtin:
        from .paths import BUILTIN_UPSCALER

        args.upscaler = str(BUILTIN_UPSCALER)
    strength = args.strength if args.strength is not None else UPSCALE_STRENGTH.get(args.mode, 0.3)
    prompt, negative = args.prompt or "", args.negative or ""
    request = _request(args, "upscale", strength=strength, init_image=init, upscale_mode=args.mode,
                       scale=args.scale, upscaler=args.upscaler, tile=args.tile, tile_overlap=args.overlap,
                       keep_composition=args.keep_composition, prompt=prompt, negative_prompt=negative)  # fmt: skip
    request.validate()  # before torch is imported: bad input answers at once
    if args.upscaler is not None and not args.server and not Path(args.upscaler).is_file():
        raise EngineError(f"Upscaler not found: {args.upscaler}")
    if args.mode in ("diffusion", "latent") and not args.server:
        from .core.samplers import scheduler_spec
        from .engine.loader import check_mode, read_layout, resolve_model_path

        scheduler_spec(request.sampler, request.schedule)
        if args.model is not None and not Path(args.model).exists():
            raise EngineError(f"Model not found: {args.model}")
        check_mode(read_layout(resolve_model_path(args.model, BUILTIN_MODEL)), "upscale", args.mode)
    if not args.server:
        _check_device(args.device, args)
    if builtin:  # said after the checks: bad input still answers in one line
        print("studio: upscaler: the built-in SwinIR x4 (--upscaler picks another)", file=sys.stderr, flush=True)
    return _generate_and_save(args, request, _source_prompt(args))


def _source_prompt(args: argparse.Namespace) -> dict[str, str]:
    """A resize or model upscale runs no prompt: its file keeps the source image's prompt and negative (A1111's extras
    tab keeps the source's text), or the --prompt / --negative given. A sampled upscale writes the prompt it ran."""
    from .core.metadata import SOURCE_PROMPT_KEYS, parse_parameters, read_parameters

    if args.mode in ("diffusion", "latent"):
        return {}
    source = {"prompt": "", "negative_prompt": ""}
    if args.prompt is None or args.negative is None:
        text = read_parameters(args.image)  # readable: _read_image read it
        source = parse_parameters(text) if text else source
    prompt = source["prompt"] if args.prompt is None else args.prompt
    negative = source["negative_prompt"] if args.negative is None else args.negative
    return dict(zip(SOURCE_PROMPT_KEYS, (prompt, negative), strict=True))


def _info(path: str) -> int:
    from .core.metadata import read_parameters

    if not Path(path).is_file():
        raise RequestError(f"Image not found: {path}")
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            text = read_parameters(path)
    except RequestError as e:
        if isinstance(e.__cause__, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            from .core.imagefile import too_large

            raise too_large("image", path, first_line(e.__cause__).split(")")[0].replace("Image size (", "")) from e
        raise
    if text is None:
        print(f"studio: {path} holds no generation parameters", file=sys.stderr)
        return 1
    print(printable(text))
    from .core.branch import read_info
    from .core.metadata import parse_parameters

    if (branch := read_info(parse_parameters(text)["params"])) is not None:  # our own keys, said in words too
        changed = ", ".join(branch.changes) or "nothing"
        print(f"({branch.label()}, parent hash {branch.parent_hash or 'unknown'}; changed: {changed})")
    return 0


def printable(text: str) -> str:
    """`text` with control characters other than newline and tab escaped (\\x1b...): a PNG's metadata must not
    drive the terminal."""
    import unicodedata

    return "".join(c.encode("unicode_escape").decode("ascii") if c not in "\n\t" and unicodedata.category(c) == "Cc"
                   else c for c in text)  # fmt: skip


def model_folders(extra: list[str] | None = None) -> list[Path]:
    """models/ first, then the folders the settings name, then the command line's."""
    from .paths import MODELS_DIR
    from .settings import Settings

    return [MODELS_DIR, *map(Path, Settings.load().model_folders), *map(Path, extra or [])]


def _list_models(extra: list[str], hashes: bool, add: list[str] = ()) -> int:
    from .core import filehash
    from .core.modelfiles import human_size
    from .core.modellibrary import scan
    from .settings import Settings

    missing = [str(f) for f in map(Path, [*extra, *add]) if not f.expanduser().is_dir()]
    if missing:
        print(f"studio: error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if add:
        for folder in add:  # scanned before it is saved: a folder that breaks the scan would break every start
            try:
                scan([folder])
            except Exception as e:  # noqa: BLE001 - whatever it is, the folder is not saved
                print(f"studio: error: cannot scan {folder} ({type(e).__name__}: {first_line(e)}); not added",
                      file=sys.stderr)  # fmt: skip
                return EXIT_BAD_INPUT
        settings = Settings.load()
        for folder in add:
            resolved = str(Path(folder).expanduser().resolve())
            if resolved not in settings.model_folders:
                settings.model_folders.append(resolved)
        settings.save()
        print(f"Model folders: {', '.join(settings.model_folders)}", file=sys.stderr)
    folders = model_folders(extra)
    items = scan(folders)
    for m in items:
        short = ""
        if hashes:
            try:
                if m.kind == "diffusers":
                    from .core.metadata import model_hash

                    short = model_hash(m.path)
                elif m.kind == "lora":
                    short = filehash.lora_short_hash(m.path)
                else:
                    short = filehash.file_hash(m.path)[: 12 if m.kind == "embedding" else 10]
            except (OSError, EngineError):
                short = "?"
        cols = [m.kind, m.arch_label or "-", human_size(m.size), *([short] if hashes else []), m.name, str(m.path)]
        print("\t".join(cols))
        if m.note:
            print(f"  {m.note}", file=sys.stderr)
    print(f"{len(items)} model files in {len(folders)} folders", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    global _line_open
    _line_open = False
    _split.clear()
    _split["t0"] = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    message = unknown_command(argv[0], parser) if argv else None
    if message is not None:
        print(message, file=sys.stderr)
        return EXIT_BAD_INPUT
    args = parser.parse_args(argv)
    try:
        if args.command == "generate" and args.branch_from is not None:
            from .cli_branch import branch_request

            request = branch_request(args, tuple(_lora_arg(a) for a in args.lora))
            _check_device(args.device, args)
            return _generate_and_save(args, request)
        if args.command == "generate":
            if args.prompt is None:
                raise RequestError("the following arguments are required: --prompt (or --branch-from PNG --at-step K)")
            args.negative = "" if args.negative is None else args.negative
            return _run_generation(args, "txt2img")
        if args.command == "grid":
            return _run_grid(args)
        if args.command in ("img2img", "inpaint", "outpaint"):
            return _run_generation(args, args.command)
        if args.command == "upscale":
            return _run_upscale(args)
        if args.command == "models":
            return _list_models(args.folder, args.hashes, args.add)
        if args.command == "samplers":
            from .core.samplers import SAMPLER_NAMES

            print("\n".join(SAMPLER_NAMES))
            return 0
        if args.command == "schedules":
            from .core.samplers import SCHEDULE_NAMES

            print("\n".join(SCHEDULE_NAMES))
            return 0
        if args.command == "info":
            return _info(args.image)
        if args.command == "make-tiny-model":
            from .testing.tiny import build_tiny_pipeline, build_tiny_upscaler

            if args.kind == "upscale":
                print(build_tiny_upscaler(args.path, args.seed))
            else:
                print(build_tiny_pipeline(args.path, args.kind, args.seed))
            return 0
        if hasattr(args, "func"):
            return int(args.func(args) or 0)
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    except EngineError as e:
        from .core.output import SaveError

        _say(f"studio: error: {first_line(e)}")
        return 1 if isinstance(e, SaveError) else EXIT_BAD_INPUT  # a SaveError: the saved paths are printed already
    except KeyboardInterrupt:
        _say("studio: interrupted")
        return 130
    except BrokenPipeError:  # `studio info x.png | head`: the reader has what it wanted
        _quiet_stdout()
        return 0
    except Exception as e:  # noqa: BLE001 - the CLI promises one line, never a traceback
        if is_out_of_memory(e):  # MemoryError, torch's OutOfMemoryError, or the CPU allocator's RuntimeError
            _say(f"studio: error: {OUT_OF_MEMORY}")
        elif type(e).__name__ == "DecompressionBombError":  # an image read outside studio.core.imagefile
            from .core.requests import MAX_UPSCALE_SIDE

            _say(f"studio: error: The image is too large: at most {MAX_UPSCALE_SIDE} px a side")
            return EXIT_BAD_INPUT
        else:
            _say(f"studio: unexpected error ({type(e).__name__}): {first_line(e)}")
        return 1


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's own flush at exit meets no broken pipe either."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass

"""Command-line entry points of the training package (``studio train-vae`` etc.).

The main CLI calls :func:`add_subcommands`; ``python -m studio.training`` works on its own too.
"""

from __future__ import annotations

import argparse
import importlib
import sys

DEFAULT_RUN_DIR = "runs/builtin"
DEFAULT_MODEL_DIR = "models/builtin"
# The help of options several commands share ("the preset's": what --preset sets).
RUN_DIR_HELP = "the training run's folder (checkpoint, log)"
PRESET_HELP = "sizes and defaults: cpu (this machine), gpu, tiny (a smoke test)"
STEPS_HELP = "a fixed number of steps (default: the preset's)"
BATCH_HELP = "images per step (default: the preset's)"
SEED_HELP = "random seed"
THREADS_HELP = "CPU threads (default: the preset's)"
EVAL_IMAGES_HELP = "held-out images measured at the end"
LR_HELP = "learning rate (default: the preset's)"
NO_EMA_HELP = "export the raw weights instead of the EMA"


def _lazy(module: str, name: str):
    """A subcommand's function, imported only when that subcommand runs (so --help imports no torch)."""

    def run(args) -> None:
        getattr(importlib.import_module(f".{module}", __package__), name)(args)

    return run


def add_upscaler_subcommands(subparsers) -> None:
    """The built-in upscalers: SwinIR x4 and the x4 latent upscaler (StableDiffusionUpscalePipeline layout)."""
    p = subparsers.add_parser("train-swinir", help="train the built-in SwinIR x4 (L1, shapes at 4x)")
    p.add_argument("--out", default="runs/swinir", help="run folder (checkpoint, log, result)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "tiny"], help=PRESET_HELP)
    p.add_argument("--steps", type=int, default=None, help="a fixed number of steps instead of the time budget")
    p.add_argument("--time-budget-minutes", type=float, default=None, help="training time (default: the preset's)")
    p.add_argument("--batch", type=int, default=None, help=BATCH_HELP)
    p.add_argument("--lr", type=float, default=None, help=LR_HELP)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this much wall time")
    p.add_argument("--eval-images", type=int, default=32, help=EVAL_IMAGES_HELP)
    p.set_defaults(func=_lazy("train_swinir", "main_train_swinir"))

    p = subparsers.add_parser("export-swinir", help="write the SwinIR x4 .safetensors (EMA weights)")
    p.add_argument("--run-dir", default="runs/swinir", help=RUN_DIR_HELP)
    p.add_argument("--out", default="models/swinir-x4/swinir-x4.safetensors", help="the .safetensors file to write")
    p.add_argument("--no-ema", action="store_true", help=NO_EMA_HELP)
    p.add_argument("--fp32", action="store_true", help="store float32 weights (default float16)")
    p.set_defaults(func=_lazy("train_swinir", "main_export_swinir"))

    p = subparsers.add_parser("train-latent-upscaler",
                              help="train the built-in x4 latent upscaler (its VAE, then text encoder + UNet)")
    p.add_argument("--out", default="runs/latent-up", help="run folder (vae/, unet/)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "tiny"], help=PRESET_HELP)
    p.add_argument("--stage", default="all", choices=["all", "vae", "unet"], help="run only this stage")
    p.add_argument("--vae-steps", type=int, default=None, help="a fixed number of VAE steps (default: the preset's)")
    p.add_argument("--vae-lr", type=float, default=None, help="the VAE stage's learning rate (preset cpu: 3e-5)")
    p.add_argument("--unet-steps", type=int, default=None, help="a fixed number of UNet steps instead of the budget")
    p.add_argument("--unet-lr", type=float, default=None, help="the UNet stage's learning rate (preset cpu: 1e-4)")
    p.add_argument("--from-model", default=None,
                   help="UNet stage: start from this latent upscaler folder's VAE and UNet (models/latent-upscaler-x4)")
    p.add_argument("--time-budget-minutes", type=float, default=None, help="UNet training time")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this much wall time")
    p.add_argument("--eval-images", type=int, default=16, help=EVAL_IMAGES_HELP)
    p.set_defaults(func=_lazy("train_upscaler", "main_train_upscaler"))

    p = subparsers.add_parser("export-latent-upscaler", help="write the x4 latent upscaler's diffusers folder")
    p.add_argument("--run-dir", default="runs/latent-up", help=RUN_DIR_HELP)
    p.add_argument("--out", default="models/latent-upscaler-x4", help="the diffusers folder to write")
    p.add_argument("--no-ema", action="store_true", help=NO_EMA_HELP)
    p.add_argument("--fp32", action="store_true", help="store float32 weights (default float16)")
    p.add_argument("--unet-copy", action="store_true",
                   help="ship the UNet's pass-through start (a copy of its condition) instead of the trained one")
    p.add_argument("--unet-only", action="store_true",
                   help="write only the kept UNet (the run's best.pt) into --out/unet, leaving the rest of the folder")
    p.set_defaults(func=_lazy("export_upscaler", "main_export_upscaler"))


def add_tiny_decoder_subcommand(subparsers) -> None:
    """The tiny preview decoder of a built-in model (its options; torch is imported only when it runs)."""
    p = subparsers.add_parser("train-tiny-decoder",
                              help="distil a tiny (TAESD-style) preview decoder from a built-in model's VAE")
    p.add_argument("--model", default="models/builtin", help="the model folder whose VAE is distilled")
    p.add_argument("--run-dir", default=None, help="checkpoints and logs (default runs/tiny-decoder-<model>)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "tiny"], help="cpu (~20-30 min), tiny (tests), gpu")
    p.add_argument("--steps", type=int, default=None, help="steps (default: the preset's)")
    p.add_argument("--time-budget-minutes", type=float, default=None,
                   help="train for this much training time instead of --steps (LR follows the time spent)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    p.add_argument("--pool-size", type=int, default=None, help="scenes encoded once (default: the preset's)")
    p.add_argument("--targets-once", type=int, default=None, metavar="N",
                   help="decode the targets once, for the pool and N-1 augmented copies (for a slow VAE)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--seed", type=int, default=0, help="data and augmentation seed")
    p.add_argument("--init-from", default=None, metavar="FILE",
                   help="start from this tiny decoder (same architecture), e.g. the model's own after a VAE change")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    p.add_argument("--plain-fraction", type=float, default=None,
                   help="share of the scene pool that is plain one-colour pictures (a removal on a plain background)")
    p.add_argument("--plain-noise", type=float, default=None,
                   help="noise std on those pictures' latents, unscaled (as train-vae-gan's)")
    p.add_argument("--resume", action="store_true", help="go on from the run folder's checkpoint")
    p.add_argument("--install", action="store_true", help="copy the result into the model folder (tiny_decoder.safetensors)")
    p.set_defaults(func=_lazy("train_tiny_decoder", "main"))


def add_controlnet_subcommands(subparsers) -> None:
    """The built-in scribble ControlNet: train beside the frozen built-in model, export, measure."""
    p = subparsers.add_parser("train-controlnet", help="train the built-in scribble ControlNet (outline -> filled shape)")
    p.add_argument("--run-dir", default="runs/controlnet", help=RUN_DIR_HELP)
    p.add_argument("--base", default=DEFAULT_MODEL_DIR, help="the frozen model it controls (a diffusers folder)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "tiny"], help=PRESET_HELP)
    p.add_argument("--steps", type=int, default=None, help=STEPS_HELP)
    p.add_argument("--batch", type=int, default=None, help=BATCH_HELP)
    p.add_argument("--lr", type=float, default=None, help=LR_HELP)
    p.add_argument("--pool-size", type=int, default=None, help="outline / picture pairs drawn once (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--time-budget-minutes", type=float, default=None,
                   help="train for this much training time instead of --steps (LR schedule follows the time spent)")
    p.set_defaults(func=_lazy("train_controlnet", "main_train_controlnet"))

    p = subparsers.add_parser("export-controlnet", help="write the ControlNet's diffusers folder (EMA weights, fp16)")
    p.add_argument("--run-dir", default="runs/controlnet", help=RUN_DIR_HELP)
    p.add_argument("--out", default="models/builtin-scribble", help="the folder to write")
    p.add_argument("--no-ema", action="store_true", help=NO_EMA_HELP)
    p.set_defaults(func=_lazy("export_controlnet", "main_export_controlnet"))

    p = subparsers.add_parser("evaluate-control",
                              help="shape (IoU with the outline) and colour with and without the ControlNet")
    p.add_argument("--model", default="models/builtin-scribble",
                   help="the ControlNet: a diffusers folder or a train-controlnet run folder (its checkpoint)")
    p.add_argument("--base", default=DEFAULT_MODEL_DIR, help="the model it controls")
    p.add_argument("--n", type=int, default=64, help="held-out outlines (half data set shapes, half free figures)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps per image")
    p.add_argument("--cfg", type=float, default=6.0, help="classifier-free guidance scale")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--grid", default=None, help="save outlines and images (without, with control) as a PNG")
    p.add_argument("--json", default=None, help="write the result as JSON")
    p.set_defaults(func=_lazy("evaluate_control", "main_evaluate_control"))


def add_hole_subcommands(subparsers) -> None:
    """Phase 6: inpainting that draws the named object into the hole (see finetune_hole)."""
    p = subparsers.add_parser("finetune-hole", help="phase 6: fine-tune a model folder's U-Net to draw into the hole")
    p.add_argument("--model", default=DEFAULT_MODEL_DIR, help="the model folder to start from (its weights)")
    p.add_argument("--run-dir", default="runs/inhole", help=RUN_DIR_HELP)
    p.add_argument("--time-budget-minutes", type=float, default=50.0, help="training time (the LR schedule follows it)")
    p.add_argument("--steps", type=int, default=None, help="a fixed number of steps instead of the time budget")
    p.add_argument("--batch", type=int, default=None, help="images per step (default 32)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1.5e-4)")
    p.add_argument("--warmup", type=int, default=None, help="learning-rate warm-up steps (default 50)")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay (default 0.998)")
    p.add_argument("--train-text-encoder", action="store_true", help="train the text encoder too (default frozen)")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.set_defaults(func=_lazy("finetune_hole", "main_finetune"))

    p = subparsers.add_parser("export-hole", help="write a finetune-hole run's U-Net into a model folder")
    p.add_argument("--run-dir", default="runs/inhole", help=RUN_DIR_HELP)
    p.add_argument("--base", default=DEFAULT_MODEL_DIR, help="the model folder it started from")
    p.add_argument("--out", default=DEFAULT_MODEL_DIR, help="the folder to write (a copy of --base unless the same)")
    p.add_argument("--no-ema", action="store_true", help=NO_EMA_HELP)
    p.set_defaults(func=_lazy("finetune_hole", "main_export"))


def _add_adversarial_options(p) -> None:
    """The schedule and adversarial-term options both train-*-vae-gan commands take."""
    p.add_argument("--steps", type=int, default=None, help=STEPS_HELP)
    p.add_argument("--time-budget-minutes", type=float, default=None,
                   help="train for this much training time instead of --steps (LR follows the time spent)")
    p.add_argument("--batch", type=int, default=None, help=BATCH_HELP)
    p.add_argument("--lr", type=float, default=None, help=LR_HELP)
    p.add_argument("--disc-start", type=int, default=None, help="step the adversarial term starts at")
    p.add_argument("--disc-weight", type=float, default=None, help="factor on the adaptive adversarial weight")
    p.add_argument("--disc-ramp", type=int, default=None, help="steps that factor rises over from 0 (0: at once)")


def add_vae_gan_subcommands(subparsers) -> None:
    """Adversarial (LDM first-stage) retraining of a model's VAE, its installation and its measurement."""
    p = subparsers.add_parser("train-vae-gan", help="retrain a model's VAE with a patch discriminator (decoder only)")
    p.add_argument("--model", default=DEFAULT_MODEL_DIR, help="the model folder whose vae/ is the start")
    p.add_argument("--run-dir", default=None, help="checkpoints and logs (default runs/vae-gan-<model>)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "tiny"], help=PRESET_HELP)
    half = p.add_mutually_exclusive_group()
    half.add_argument("--decoder-only", action="store_true", default=True,
                      help="train the decoder, the encoder frozen: the latents stay the same (the default)")
    half.add_argument("--full-vae", action="store_true", help="train the encoder too, as the LDM paper does")
    _add_adversarial_options(p)
    p.add_argument("--plain-fraction", type=float, default=None,
                   help="share of each batch that is a plain one-colour picture (the data set always has an object)")
    p.add_argument("--plain-noise", type=float, default=None, help="noise std added to those pictures' latents")
    p.add_argument("--anchor", action="store_true",
                   help="the data set scenes' target is the starting decoder's output (a fix that changes nothing else)")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--eval-images", type=int, default=256, help=EVAL_IMAGES_HELP)
    p.add_argument("--resume", action="store_true", help="go on from the run folder's checkpoint")
    p.set_defaults(func=_lazy("train_vae_gan", "main_train"))

    p = subparsers.add_parser("export-vae-gan", help="install a train-vae-gan run's best VAE into the model (fp16)")
    p.add_argument("--run-dir", required=True, help=RUN_DIR_HELP)
    p.add_argument("--model", default=DEFAULT_MODEL_DIR, help="the model folder whose vae/ is replaced")
    p.add_argument("--last", action="store_true", help="the last checkpoint instead of the best on validation")
    p.add_argument("--allow-new-latents", action="store_true", help="install a --full-vae run's VAE anyway")
    p.set_defaults(func=_lazy("train_vae_gan", "main_export"))

    p = subparsers.add_parser("evaluate-vae", help="PSNR, SSIM, edge sharpness of VAEs on held-out scenes")
    p.add_argument("--vae", action="append", required=True, help="a diffusers VAE folder (repeat to compare)")
    p.add_argument("--n", type=int, default=256, help="held-out scenes")
    p.add_argument("--png", default=None, help="write a side-by-side picture: truth | each VAE")
    p.add_argument("--json", default=None, help="write the scores as JSON")
    p.set_defaults(func=_lazy("train_vae_gan", "main_evaluate"))


def add_upscaler_vae_gan_subcommands(subparsers) -> None:
    """The same adversarial retraining for the x4 latent upscaler's VAE decoder (its structured latent kept)."""
    p = subparsers.add_parser("train-upscaler-vae-gan",
                              help="retrain the x4 latent upscaler's VAE decoder with a patch discriminator")
    p.add_argument("--model", default="models/latent-upscaler-x4", help="the upscaler folder whose vae/ is the start")
    p.add_argument("--run-dir", default=None, help="checkpoints and logs (default runs/upscaler-vae-gan)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "tiny"], help=PRESET_HELP)
    _add_adversarial_options(p)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--eval-images", type=int, default=16, help=EVAL_IMAGES_HELP)
    p.add_argument("--resume", action="store_true", help="go on from the run folder's checkpoint")
    p.set_defaults(func=_lazy("train_upscaler_vae_gan", "main_train"))

    p = subparsers.add_parser("export-upscaler-vae-gan",
                              help="install a train-upscaler-vae-gan run's kept decoder into the upscaler folder")
    p.add_argument("--run-dir", required=True, help=RUN_DIR_HELP)
    p.add_argument("--model", default="models/latent-upscaler-x4", help="the upscaler folder whose vae/ is replaced")
    p.add_argument("--last", action="store_true", help="the last checkpoint instead of the kept one")
    p.set_defaults(func=_lazy("train_upscaler_vae_gan", "main_export"))


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("train-vae", help="stage (a): train the built-in model's AutoencoderKL")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=RUN_DIR_HELP)
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "tiny"], help=PRESET_HELP)
    p.add_argument("--steps", type=int, default=None, help=STEPS_HELP)
    p.add_argument("--batch", type=int, default=None, help=BATCH_HELP)
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--eval-images", type=int, default=256, help=EVAL_IMAGES_HELP)
    p.set_defaults(func=_lazy("train_vae", "main_vae"))

    p = subparsers.add_parser("train-unet", help="stages (b)+(c): train the text encoder and the UNet jointly")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=RUN_DIR_HELP)
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "tiny"], help=PRESET_HELP)
    p.add_argument("--steps", type=int, default=None, help=STEPS_HELP)
    p.add_argument("--batch", type=int, default=None, help=BATCH_HELP)
    p.add_argument("--pool-size", type=int, default=None, help="images encoded to latents once (default: the preset's)")
    p.add_argument("--full-mask-prob", type=float, default=None, help="share of text-to-image samples (no mask)")
    p.add_argument("--noise-offset", type=float, default=None, help="offset noise strength (default 0.1)")
    p.add_argument("--latent-scale", type=float, default=None,
                   help="multiply the VAE scaling factor (< 1 = noisier schedule in effect; shipped in the VAE config)")
    p.add_argument("--lr", type=float, default=None, help=LR_HELP)
    p.add_argument("--conv-in-kernel", type=int, default=None, help="UNet input convolution kernel (odd)")
    p.add_argument("--warmup", type=int, default=None, help="learning-rate warm-up steps (default: the preset's)")
    p.add_argument("--x0-floor", type=float, default=None,
                   help="raise the loss weight at high noise to X0_FLOOR / SNR (the layout is decided there)")
    p.add_argument("--high-noise-cap", type=float, default=None, help="the most that weight may be (default 10)")
    p.add_argument("--init-from", default=None, help="start from the weights of another run's checkpoint.pt")
    p.add_argument("--pool-from", default=None, help="use another run's pool.pt (latents of the same VAE)")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this much wall time")
    p.add_argument("--time-budget-minutes", type=float, default=None,
                   help="train for this much training time instead of --steps (LR schedule follows the time spent)")
    p.set_defaults(func=_lazy("train_unet", "main_unet"))

    p = subparsers.add_parser("export", help="write the diffusers folder from a training run (EMA weights)")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=RUN_DIR_HELP)
    p.add_argument("--out", default=DEFAULT_MODEL_DIR, help="the model folder to write")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--fp32", action="store_true", help="store float32 weights (default float16, to keep it small)")
    p.add_argument("--no-preview", action="store_true", help="do not fit latent_rgb.json")
    p.set_defaults(func=_lazy("export", "main_export"))

    p = subparsers.add_parser("fit-preview", help="fit latent_rgb.json (latent -> RGB preview factors)")
    p.add_argument("--model", default=DEFAULT_MODEL_DIR, help="the model folder (its latent_rgb.json is written)")
    p.add_argument("--images", type=int, default=512, help="images to fit the factors on")
    p.set_defaults(func=_lazy("export", "main_fit_preview"))

    p = subparsers.add_parser("evaluate", help="colour / shape / position accuracy on held-out prompts, VAE PSNR")
    p.add_argument("--model", default=DEFAULT_MODEL_DIR, help="the model folder to measure")
    p.add_argument("--n", type=int, default=None, help="number of held-out prompts (default: all)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps per image")
    p.add_argument("--cfg", type=float, default=6.0, help="classifier-free guidance scale")
    p.add_argument("--sampler", default="euler", choices=["euler", "dpmpp_2m", "euler_a"],
                   help="the sampler of the generated images")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--repeats", type=int, default=2, help="each held-out triple this many times (other seeds)")
    p.add_argument("--psnr-images", type=int, default=256, help="images for the VAE's reconstruction PSNR")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--grid", default=None, help="save the generated images as a PNG grid")
    p.add_argument("--no-inpaint", action="store_true", help="skip the inpainting measures (9-channel models)")
    p.add_argument("--remove-n", type=int, default=None,
                   help="pictures for the 'remove an object' measure (default: all the prompts)")
    p.add_argument("--hole-repeats", type=int, default=1,
                   help="'into the hole' cases: each held-out triple this many times (x2 prompts)")
    p.add_argument("--json", default=None, help="write the result as JSON")
    p.set_defaults(func=_lazy("evaluate", "main_evaluate"))
    add_hole_subcommands(subparsers)

    add_upscaler_subcommands(subparsers)
    add_tiny_decoder_subcommand(subparsers)
    add_vae_gan_subcommands(subparsers)
    add_upscaler_vae_gan_subcommands(subparsers)
    add_controlnet_subcommands(subparsers)

    p = subparsers.add_parser("showcase", help="one picture of what each built-in model does (the README's)")
    p.add_argument("--out", default="models/builtin/showcase.png", help="the PNG to write")
    p.add_argument("--models", default="models", help="the folder holding the built-in models")
    p.add_argument("--control", default=None, help="the scribble row's ControlNet (default: models/*scribble*)")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.set_defaults(func=_lazy("showcase", "main_showcase"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studio.training", description="Train the built-in model")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    from studio.core.errors import EngineError, first_line

    try:
        args.func(args)
    except EngineError as e:  # bad input: one line, as the main CLI does
        print(f"{parser.prog}: error: {first_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None

"""`studio` / `python -m studio`: the window with no subcommand, else the command-line interface."""

from __future__ import annotations

import argparse
import sys

CLI_COMMANDS = {
    "generate",
    "img2img",
    "samplers",
    "schedules",
    "info",
    "make-tiny-model",
    "train-vae",
    "train-unet",
    "export",
    "fit-preview",
    "evaluate",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and (argv[0] in CLI_COMMANDS or argv[0] in ("-h", "--help", "--version")):
        from .cli import main as cli_main

        return cli_main(argv)
    p = argparse.ArgumentParser(prog="studio", description="Latent Studio (run `studio --help` for the commands)")
    p.add_argument("--model", help="model folder to use for this run")
    p.add_argument("--output-dir", help="output folder for this run")
    args, qt_args = p.parse_known_args(argv)
    from .ui.app import run_app

    return run_app([sys.argv[0], *qt_args], model=args.model, output_dir=args.output_dir)


if __name__ == "__main__":
    raise SystemExit(main())

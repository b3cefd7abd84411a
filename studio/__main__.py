"""`studio` / `python -m studio`: the window with no subcommand, else the command-line interface.

A first word that is not an option is a command: known ones run in `studio.cli`, an unknown one (a typo)
is one line on stderr and exit 2, never the window. The window's own options are parsed strictly too.
"""

from __future__ import annotations

import sys
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".lsproj")  # `studio PATH.png` opens the window on that image
# (or on that project: .lsproj)
CLI_OPTIONS = ("-h", "--help", "--version")  # the CLI's top-level options; the command names come from its parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .cli import OneLineParser

    first = argv[0] if argv else ""
    is_image = first.lower().endswith(IMAGE_SUFFIXES)
    if argv and (first in CLI_OPTIONS or (not first.startswith("-") and not is_image)):
        from .cli import main as cli_main

        return cli_main(argv)  # an unknown command: one line, exit 2 (cli.unknown_command)
    p = OneLineParser(prog="studio", description="Latent Studio (run `studio --help` for the commands)")
    p.add_argument("--model", help="model folder to use for this run")
    p.add_argument("--output-dir", help="output folder for this run")
    p.add_argument(
        "--demo",
        action="store_true",
        help="open the window on the built-in demo backend, no model needed: for a first look and screenshots",
    )
    p.add_argument("image", nargs="?", help="an image to open on the canvas (PNG, JPEG, WebP), or a project (.lsproj)")
    args = p.parse_args(argv)  # not parse_known_args: `--bogus` is one line and exit 2, as in the CLI
    if args.image and not Path(args.image).is_file():
        print(f"studio: error: image not found: {args.image}", file=sys.stderr)
        return 2
    from .app import run_app

    return run_app(model=args.model, output_dir=args.output_dir, demo=args.demo, image=args.image)


if __name__ == "__main__":
    raise SystemExit(main())

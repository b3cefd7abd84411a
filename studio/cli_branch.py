"""`studio generate --branch-from PARENT.png --at-step K [changed options]`: a branch from the command line.

The parent's request comes from its PNG's parameters; its state at step K from the PNG's latent sidecar
(`<stem>.latents.npz`, written by `--keep-latents` or the window's Keep latents setting) when there is one, else
the engine re-runs the parent's first K steps from its seed. The options given on the command line are what the
branch changes (prompt, negative, sampler, schedule, steps = the branch's total, CFG, seed, LoRAs); no torch here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .core import branch
from .core.errors import RequestError
from .core.requests import GenerateRequest

# The parent's fields its parameters restore for a branch (the rest are the studio's defaults).
PARENT_FIELDS = ("prompt", "negative_prompt", "steps", "sampler", "schedule", "cfg", "seed", "width", "height",
                 "clip_skip", "speed", "deep_cache")  # fmt: skip


def add_options(g: argparse.ArgumentParser) -> None:
    b = g.add_argument_group("branch", "continue another run from its step K with what you change (README: "
                             "Branching a run)")  # fmt: skip
    b.add_argument("--branch-from", default=None, metavar="PNG", help="the parent image (its parameters are the start)")
    b.add_argument("--at-step", type=int, default=None, metavar="K", help="the parent's step to continue from")
    g.add_argument("--keep-latents", action="store_true",
                   help="also write every step's latent next to the PNG (<name>.latents.npz): a later branch from it "
                   "starts at once instead of re-running its first steps")  # fmt: skip


def parent_request(png: Path, model: str | None) -> tuple[GenerateRequest, str]:
    """The parent's request as it ran (seed and size set), and its parameters text."""
    from .core.metadata import read_parameters, request_fields

    if not png.is_file():
        raise RequestError(f"Parent image not found: {png}")
    text = read_parameters(png)
    if not text:
        raise RequestError(f"{png.name} holds no generation parameters: it cannot be branched")
    found = request_fields(text)
    if found.get("mode", "txt2img") != "txt2img" or found.get("hires_fix"):
        raise RequestError(f"{png.name} is not a plain text-to-image run: only those can be branched")
    if found.get("seed") is None or not found.get("width"):
        raise RequestError(f"{png.name} records no seed or size: its steps cannot be recomputed")
    fields = {k: found[k] for k in PARENT_FIELDS if k in found}
    return GenerateRequest.from_fields(**fields, model=model, preview="none"), text


def branch_request(args: argparse.Namespace, loras: tuple[tuple[str, float], ...] = ()) -> GenerateRequest:
    """The branch the options ask for, with the parent's kept state (sidecar) or none (the engine recomputes).
    `loras`: the --lora options read (given: they replace the parent's)."""
    from .core.metadata import parse_parameters

    if args.at_step is None:
        raise RequestError("--branch-from needs --at-step K: the parent's step to continue from")
    png = Path(args.branch_from)
    parent, text = parent_request(png, args.model)
    k = args.at_step
    own = branch.read_info(parse_parameters(text)["params"])
    if own is not None and k <= own.step:  # those steps are its parent's, on the parent's schedule
        parent_name = own.parent_name or "its parent"
        raise RequestError(f"Steps 1 to {own.step} of {png.name} are its parent's: branch from {parent_name} at step "
                           f"{k} instead")  # fmt: skip
    state = branch.load_sidecar(png, k)
    if state is None and own is not None:
        raise RequestError(f"{png.name} is itself a branch and has no latent sidecar: branch from its parent, or "
                           "keep latents when making it")  # fmt: skip
    changes: dict = {}
    for opt, name in (("prompt", "prompt"), ("negative", "negative_prompt"), ("sampler", "sampler"),
                      ("schedule", "schedule"), ("steps", "steps"), ("cfg", "cfg"), ("seed", "seed")):  # fmt: skip
        if getattr(args, opt, None) is not None:
            changes[name] = getattr(args, opt)
    if loras:
        changes["loras"] = loras
    # The branch's own steps run at the command's --speed (the window's: its panel's); the parent's first steps, when
    # recomputed, at the parent's, as its PNG records it.
    if getattr(args, "speed", None):
        changes["speed"] = args.speed
    spec = branch.BranchSpec(k, state.image(0) if state is not None else None, parent, png.name,
                             branch.image_hash(png))  # fmt: skip
    request = parent.replace(**changes, branch=spec)
    request.validate()
    return request

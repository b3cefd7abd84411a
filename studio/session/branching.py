"""Branch from here: the parent run and step the next runs continue from (no Qt; the session holds one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studio.core import branch
from studio.core.jobs import JobOutput
from studio.core.requests import GenerateRequest


@dataclass
class PendingBranch:
    """The next runs branch from step `step` of `output`'s image 0, until the artist stops branching."""

    output: JobOutput
    step: int

    @property
    def run(self) -> GenerateRequest:
        """The run on the timeline, as it ran (image 0)."""
        r = self.output.result
        return r.request.replace(batch=1, seed=int(r.seeds[0]) if r.seeds else r.request.seed)

    def _origin(self) -> tuple[GenerateRequest, str, str]:
        """The run whose step this is, its file name and hash: the timeline's run, or for a step a branch took over
        from its parent (step <= its branch step), that parent (its state and schedule are the parent's)."""
        path = self.output.paths[0] if self.output.paths else None
        req = run = self.run
        name, digest = (path.name, "") if path is not None else ("", "")
        while req.branch is not None and self.step <= req.branch.step:
            spec = req.branch
            req, name, digest = spec.parent, spec.parent_name, spec.parent_hash
        if req is run and path is not None and Path(path).is_file():
            digest = branch.image_hash(path)
        return req, name, digest

    @property
    def parent(self) -> GenerateRequest:
        return self._origin()[0]

    @property
    def parent_name(self) -> str:
        return self._origin()[1] or "an unsaved image"

    def label(self) -> str:
        return f"branch of {self.parent_name} at step {self.step}"

    def panel_fields(self) -> dict:
        """The timeline run's parameters for the panel (the artist changes some of them)."""
        p = self.run
        return {"prompt": p.prompt, "negative_prompt": p.negative_prompt, "sampler": p.sampler,
                "schedule": p.schedule, "steps": p.steps, "cfg": p.cfg, "seed": p.seed, "width": p.width,
                "height": p.height, "batch": 1, "hires_fix": False}  # fmt: skip

    def spec(self) -> branch.BranchSpec:
        res, k = self.output.result, self.step
        states = res.step_states  # none from a server: it re-runs the parent's first k steps itself
        parent, name, digest = self._origin()
        latents = res.latents[:k, :1] if res.latents is not None and len(res.latents) >= k else None
        x0 = res.x0[:k, :1] if res.x0 is not None and len(res.x0) >= k else None
        state = states[k - 1].image(0) if len(states) >= k else None
        return branch.BranchSpec(k, state, parent, name, digest, latents, x0,
                                 tuple(s.image(0) for s in states[:k]) if state is not None else ())  # fmt: skip


def why_no_branch(output: JobOutput | None, step: int, remote: bool = False) -> str:
    """Why the timeline's step cannot be branched from ("" when it can). `remote`: a ComfyUI server, which keeps
    no sampler states but re-runs the parent's first steps itself."""
    if output is None:
        return "Nothing to branch from yet: run a generation first"
    r = output.result
    if r.request.mode != "txt2img" or r.request.hires.runs():
        return "Only a text-to-image run without the hires fix can be branched"
    if r.request.sampler in branch.SECOND_ORDER:
        return f"{r.request.sampler} cannot branch: each step is two model calls on an interleaved schedule"
    if r.cancelled or not r.images:
        return "A cancelled run cannot be branched: its image was never finished"
    if not 1 <= step < r.request.steps:
        return "The last step is the finished image: branch from an earlier step"
    if len(r.step_states) < step and not remote:
        return "This engine keeps no sampler state for its steps: branching needs the local engine"
    return ""

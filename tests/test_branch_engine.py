"""Branching a run from step k on a tiny model: an unchanged branch is the parent, pixel for pixel, for
deterministic, ancestral, SDE and multistep samplers; a changed prompt equals a hand-written loop that changes
the prompt at step k; the sidecar and the recomputed state give the same branch."""

from __future__ import annotations

import numpy as np
import pytest

from studio.core import branch
from studio.core.branch import BranchSpec
from studio.core.errors import RequestError
from studio.core.requests import GenerateRequest

SIZE = 32
K = 2
STEPS = 5


def parent_run(engine, model, sampler, **kw):
    r = GenerateRequest(prompt="a red circle", negative_prompt="blur", model=model, sampler=sampler, steps=STEPS,
                        seed=77, width=SIZE, height=SIZE, cfg=5.0, **kw)  # fmt: skip
    return engine.generate(r)


def spec_of(res, k=K, **kw) -> BranchSpec:
    st = res.step_states
    return BranchSpec(k, st[k - 1].image(0), res.request, "parent.png", "0123456789", res.latents[:k], res.x0[:k],
                      tuple(st[:k]), **kw)  # fmt: skip


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DDIM", "UniPC"])
def test_unchanged_branch_is_the_parent(engine, tiny_model, sampler):
    parent = parent_run(engine, tiny_model, sampler)
    assert len(parent.step_states) == STEPS
    used = parent.request
    b = engine.generate(used.replace(branch=spec_of(parent)))
    assert np.array_equal(b.images[0], parent.images[0])
    # The branch's timeline is a whole run: the parent's first K steps, then its own.
    assert b.latents.shape[0] == STEPS and np.array_equal(b.latents[:K], parent.latents[:K])
    assert b.extra_params["Branch step"] == K and b.extra_params["Branch changes"] == "nothing"
    # A changed prompt changes the image (the branch did run its own steps).
    c = engine.generate(used.replace(prompt="a blue square", branch=spec_of(parent)))
    assert not np.array_equal(c.images[0], parent.images[0])
    assert c.extra_params["Branch changes"] == "prompt"


def test_history_matters_for_multistep(engine, tiny_model, monkeypatch):
    """Without the solver's history (a fresh first-order start at k) DPM++ 2M lands elsewhere: the restore is
    what makes the unchanged branch exact."""
    from studio.engine import branching

    parent = parent_run(engine, tiny_model, "DPM++ 2M")
    spec = spec_of(parent)
    monkeypatch.setattr(branching.BranchRun, "_restore_history", lambda self: None)
    b = engine.generate(parent.request.replace(branch=spec))
    assert not np.array_equal(b.images[0], parent.images[0])


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_prompt_change_equals_a_hand_written_loop(engine, tiny_model, sampler):
    """The reference: diffusers' scheduler and the engine's U-Net and text encoding, looped by hand, with the
    prompt switched at step K."""
    import torch

    from studio.engine.conditioning import encode
    from studio.engine.schedulers import build_scheduler

    parent = parent_run(engine, tiny_model, sampler)
    b = engine.generate(parent.request.replace(prompt="a blue square", branch=spec_of(parent)))

    model = engine.load(tiny_model)
    pipe = model.pipe("txt2img")
    embeds = [encode(pipe, p, "blur") for p in ("a red circle", "a blue square")]
    sched = build_scheduler(model.scheduler_config, sampler, "Normal", 77)
    sched.set_timesteps(STEPS, device="cpu")
    gen = torch.Generator("cpu").manual_seed(77)
    lat = torch.randn((1, 4, SIZE // 2, SIZE // 2), generator=gen) * sched.init_noise_sigma
    with torch.inference_mode():
        for i, t in enumerate(sched.timesteps):
            e = embeds[0] if i < K else embeds[1]
            cond = torch.cat([e["negative_prompt_embeds"], e["prompt_embeds"]])
            x = sched.scale_model_input(torch.cat([lat] * 2), t)
            out = pipe.unet(x, t, encoder_hidden_states=cond, return_dict=False)[0]
            uncond, text = out.chunk(2)
            lat = sched.step(uncond + 5.0 * (text - uncond), t, lat, generator=gen, return_dict=False)[0]
    ref = engine.decode(model, lat)[0]
    assert np.array_equal(b.images[0], ref)
    # and the hand loop without the switch is the parent: the loop is a faithful reference
    assert not np.array_equal(ref, parent.images[0])


def test_new_sampler_schedule_and_count_continue_from_sigma_k(engine, tiny_model):
    parent = parent_run(engine, tiny_model, "Euler")
    used = parent.request
    for changes in (dict(sampler="DPM++ 2M"), dict(schedule="Karras", steps=8), dict(sampler="UniPC", steps=4)):
        b = engine.generate(used.replace(branch=spec_of(parent), **changes))
        assert b.steps_done == changes.get("steps", STEPS)
        assert b.images[0].shape == parent.images[0].shape
        # the same branch twice: the same pixels
        again = engine.generate(used.replace(branch=spec_of(parent), **changes))
        assert np.array_equal(b.images[0], again.images[0])


def test_recomputed_state_and_sidecar_equal_the_kept_one(engine, tiny_model, tmp_path):
    parent = parent_run(engine, tiny_model, "Euler a")
    png = tmp_path / "parent.png"
    png.write_bytes(b"png")
    branch.save_sidecar(png, parent.step_states)
    loaded = branch.load_sidecar(png, K)
    assert loaded is not None and np.array_equal(loaded.latent, parent.step_states[K - 1].latent)
    re = engine.branch_state(parent.request, K)
    assert np.array_equal(re.step_states[K - 1].latent, parent.step_states[K - 1].latent)
    want = engine.generate(parent.request.replace(cfg=9.0, branch=spec_of(parent)))
    for state in (loaded, re.step_states[K - 1]):
        spec = BranchSpec(K, state.image(0), parent.request, "parent.png", "0123456789")
        got = engine.generate(parent.request.replace(cfg=9.0, branch=spec))
        assert np.array_equal(got.images[0], want.images[0])


def test_bad_branches_are_refused_in_one_line(tiny_model):
    res_req = GenerateRequest(prompt="x", model=tiny_model, sampler="Euler", steps=STEPS, seed=1, width=SIZE,
                              height=SIZE)  # fmt: skip
    state = branch.SamplerState(K, np.zeros((1, 4, 16, 16), np.float32))
    spec = BranchSpec(K, state, res_req)
    for bad, words in ((dict(steps=K), "more than"), (dict(sampler="Heun"), "two model calls"),
                       (dict(sampler="DDIM"), "fixed stride"), (dict(batch=2), "batch 1")):  # fmt: skip
        with pytest.raises(RequestError, match=words):
            res_req.replace(branch=spec, **bad).validate()
    with pytest.raises(RequestError, match="out of range"):
        res_req.replace(branch=BranchSpec(STEPS, state, res_req)).validate()


def test_a_9_channel_models_text_to_image_branches_exactly(engine, tiny_inpaint_model):
    """A 9-channel U-Net runs text to image through the inpainting pipeline, which draws from the generator for
    its image latents after the initial noise: the parent's generator state comes back only at the first step."""
    parent = parent_run(engine, tiny_inpaint_model, "Euler a")
    b = engine.generate(parent.request.replace(branch=spec_of(parent)))
    assert np.array_equal(b.images[0], parent.images[0])


def test_a_branch_of_a_branch_before_its_step_branches_the_first_parent(engine, tiny_model, tmp_path):
    """Steps 1..k of a branch are its parent's (its sampler, its schedule): the window's Branch from here there
    continues the first parent, so an unchanged branch of the branch at j <= k is that parent again."""
    from studio.core.jobs import JobOutput
    from studio.session.branching import PendingBranch

    parent = parent_run(engine, tiny_model, "Euler")
    child = engine.generate(parent.request.replace(sampler="DPM++ 2M", branch=spec_of(parent, k=3)))
    png = tmp_path / "child.png"
    png.write_bytes(b"child")
    spec = PendingBranch(JobOutput(child, [png]), 2).spec()
    assert (spec.parent.sampler, spec.parent_name, spec.parent_hash) == ("Euler", "parent.png", "0123456789")
    again = engine.generate(spec.parent.replace(branch=spec))
    assert np.array_equal(again.images[0], parent.images[0])
    later = PendingBranch(JobOutput(child, [png]), 4).spec()  # after the branch's step: the branch is the parent
    assert later.parent.sampler == "DPM++ 2M" and later.parent_name == "child.png" and later.parent_hash

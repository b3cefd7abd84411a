"""Exact mode asked to prepare itself (GenerateRequest.prepare_exact: Engine > Prepare Exact with OpenVINO, the
CLI's --prepare-exact): the first run of a model converts it through turbo's conversion job (progress, cancel),
then runs on OpenVINO f32 within 1/255 of plain diffusers; later runs reuse the conversion; a failure is one
notice and the run goes on in exact on torch."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("openvino")

from test_exact_openvino import _plain_diffusers, req, worst  # noqa: E402  (tests/ is on sys.path)

from studio.engine import speed, turbo  # noqa: E402
from studio.engine.engine import Engine  # noqa: E402
from studio.engine.turbo import cache, convert, runtime  # noqa: E402
from studio.session.params import Params  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    """An empty turbo cache of its own (nothing converted), an engine, and the plain diffusers image."""
    mp = pytest.MonkeyPatch()
    mp.setenv(cache.CACHE_ENV, str(tmp_path_factory.mktemp("exact-prepare-cache")))
    mp.setenv("STUDIO_EXACT_OPENVINO", "1")  # (tests/conftest.py keeps exact on torch for every other test)
    runtime.forget_stores()
    yield Engine(device="cpu"), _plain_diffusers(tiny_model)
    runtime.forget_stores()
    mp.undo()


def _key(engine: Engine, model_path: str) -> str:
    model = engine.load(model_path)
    return speed.turbo_cache_key(model, model.base)


def test_a_failed_preparation_is_one_notice_and_the_run_goes_on_in_exact_on_torch(setup, tiny_model, monkeypatch):
    engine, plain = setup

    def broken(*a, **k):
        raise turbo.TurboUnavailable("OpenVINO failed to convert the U-Net: boom\nTraceback ...")

    monkeypatch.setattr(turbo, "turbo_unet", broken)
    before = speed.exact_openvino_runs
    r = engine.generate(req(tiny_model, prepare_exact=True))
    assert r.notice == ("Exact could not be prepared with OpenVINO: OpenVINO failed to convert the U-Net: boom; "
                        "this run used exact on torch")  # fmt: skip
    assert r.request.speed == "exact" and r.extra_params["Speed"] == "exact"
    assert speed.exact_openvino_runs == before and worst(r.images[0], plain) <= 1


def test_cancel_while_preparing_exact_cancels_the_run_and_keeps_nothing(setup, tiny_model):
    engine, _plain = setup
    cancel = threading.Event()
    stages = []

    def on_step(info):
        stages.append(info.stage)
        if info.stage.startswith("Preparing Exact for "):
            cancel.set()

    r = engine.generate(req(tiny_model, prepare_exact=True), on_step=on_step, cancel=cancel)
    assert r.cancelled and not r.images
    assert any(s.startswith("Preparing Exact for ") for s in stages)
    for job in list(convert._jobs.values()):  # the abandoned conversion ends at its next traced module
        job.done.wait(600)
    assert not turbo.is_cached(_key(engine, tiny_model))
    assert type(engine.load(tiny_model).base.unet).__name__ == "UNet2DConditionModel"


def test_exact_prepares_once_with_progress_then_runs_on_openvino_f32(setup, tiny_model):
    engine, plain = setup
    assert not turbo.is_cached(_key(engine, tiny_model))
    before, conversions = speed.exact_openvino_runs, turbo.conversions
    seen = []
    r = engine.generate(req(tiny_model, prepare_exact=True), on_step=seen.append)
    assert turbo.conversions == conversions + 1 and speed.exact_openvino_runs == before + 1, r.notice
    assert turbo.is_cached(_key(engine, tiny_model))
    name = engine.load(tiny_model).name
    stages = [s.stage for s in seen if s.step == 0 and s.stage]
    percents = [int(s.rsplit(" ", 1)[1].rstrip("%")) for s in stages if s.startswith(f"Preparing Exact for {name}: ")]
    assert percents and percents == sorted(percents), stages  # the conversion's progress, in order
    assert any(s.startswith("Exact (OpenVINO f32): Compiling for ") for s in stages), stages
    assert r.request.speed == "exact" and r.extra_params["Speed"] == "exact" and r.notice == ""
    assert worst(r.images[0], plain) <= 1  # plain diffusers' pixels, within 1/255 over 20 steps

    again = engine.generate(req(tiny_model, prepare_exact=True, steps=2))  # the next run reuses the conversion
    assert turbo.conversions == conversions + 1 and speed.exact_openvino_runs == before + 2
    assert again.notice == ""


def test_the_panels_remembered_choice_reaches_the_request():
    assert Params().to_request().prepare_exact is False  # off until the artist opts in: minutes and gigabytes
    assert Params(prepare_exact=True).to_request().prepare_exact is True
    restored = Params.from_dict(Params(prepare_exact=True).to_dict())  # saved with the window's settings
    assert restored.prepare_exact is True


def test_the_cli_flag_reaches_the_request():
    from studio.cli import _request, build_parser

    args = build_parser().parse_args(["generate", "--prompt", "a red circle", "--prepare-exact"])
    assert _request(args, "txt2img").prepare_exact is True
    args = build_parser().parse_args(["generate", "--prompt", "a red circle"])
    assert _request(args, "txt2img").prepare_exact is False

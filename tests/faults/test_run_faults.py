"""The fault suite, runs (issue 24, item 3): what happens to a run when something goes wrong mid-way.

Every case uses the tiny random-weight models (tests/conftest.py) or the fake backend, 2 steps where it can,
and every wait has a hang guard (a Qt wait's timeout, a subprocess timeout). Select it with `-m faults`.

Counts of the last run (each case also adds itself to the table printed at the end of the module's run):

| group                         | cases | clean one-line outcomes | tracebacks shown | hangs | lost or half-written files |
|-------------------------------|-------|-------------------------|------------------|-------|----------------------------|
| 1. backend exception mid-run  |     5 |                       5 |                0 |     0 |                          0 |
| 2. out of memory              |    12 |                      12 |                0 |     0 |                          0 |
| 3. cancel at every phase      |     6 |                       6 |                0 |     0 |                          0 |
| 4. window closed mid-run      |     2 |                       2 |                0 |     0 |                          0 |
| 5. absurd numbers             |   104 |                     104 |                0 |     0 |                          0 |
| total                         |   129 |                     129 |                0 |     0 |                          0 |

Defects these cases found (fixed, each case failing before its fix):
- a plain RuntimeError "CUDA error: out of memory" (cuBLAS / cuDNN) or "MPS backend out of memory" was
  "Generation failed: ..." instead of the out-of-memory message and its advice (studio/core/errors.py);
- a cancel while the model loads or the prompt is encoded still ran a whole sampler step (studio/engine/engine.py);
- a NaN width or height was refused as "not a multiple of 8: use nan or nan", without the limit
  (studio/core/requests.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported anywhere

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from studio.backends.fake import FakeBackend  # noqa: E402
from studio.core.errors import OUT_OF_MEMORY, RequestError  # noqa: E402
from studio.core.requests import GenerateRequest  # noqa: E402

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
LONG_MS = 180_000  # a tiny model's run on a loaded 2-core machine: generous, but never forever
SIZE = 32


# -- the tally ----------------------------------------------------------------------------------------------------


@dataclass
class Row:
    cases: int = 0
    clean: int = 0
    tracebacks: int = 0
    hangs: int = 0
    lost: int = 0


TALLY: dict[str, Row] = {}


class Case:
    """One fault case: what the artist was told and what is on disk, counted before it is asserted."""

    def __init__(self, row: Row):
        self.row = row
        self.told = False

    def message(self, text: str) -> str:
        if "Traceback" in text or 'File "' in text:
            self.row.tracebacks += 1
        assert "\n" not in text.strip() and "Traceback" not in text and text.strip(), repr(text)
        self.told = True
        return text

    def outcome(self) -> None:
        """A clean end that needs no message (a cancel ends as cancelled, a run ends with its image)."""
        self.told = True

    def files(self, folder: Path) -> list[Path]:
        """The whole images in `folder`; a leftover temporary file or an unreadable image is lost work."""
        bad, whole = [], []
        for p in sorted(folder.iterdir()) if folder.exists() else []:
            if p.name.startswith(".") or p.suffix != ".png":
                bad.append(p)
                continue
            try:
                with Image.open(p) as im:
                    im.load()
                whole.append(p)
            except Exception:  # noqa: BLE001 - a PNG that does not read is half-written
                bad.append(p)
        self.row.lost += len(bad)
        assert not bad, f"half-written or temporary files left: {bad}"
        return whole


@contextlib.contextmanager
def case(group: str):
    row = TALLY.setdefault(group, Row())
    row.cases += 1
    c = Case(row)
    try:
        yield c
    except Exception as e:
        if "Timeout" in type(e).__name__:
            row.hangs += 1
        raise
    assert c.told, "the case never checked what the artist was told"
    row.clean += 1


@pytest.fixture(scope="module", autouse=True)
def print_tally(request):
    yield
    if not TALLY:
        return
    lines = [f"{'fault suite group':32} cases  clean  tracebacks  hangs  lost"]
    total = Row()
    for name, r in sorted(TALLY.items()):
        lines.append(f"{name:32} {r.cases:5}  {r.clean:5}  {r.tracebacks:10}  {r.hangs:5}  {r.lost:4}")
        for f in ("cases", "clean", "tracebacks", "hangs", "lost"):
            setattr(total, f, getattr(total, f) + getattr(r, f))
    lines.append(
        f"{'total':32} {total.cases:5}  {total.clean:5}  {total.tracebacks:10}  {total.hangs:5}  {total.lost:4}"
    )
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None:
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)


# -- fixtures: workers and windows that leave nothing running --------------------------------------------------------


def studio_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("studio-") and t.is_alive()]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENT_STUDIO_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("LATENT_STUDIO_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "out"
    out.mkdir()
    return out


@pytest.fixture
def worker(qtbot):
    from studio.worker import Worker

    made = []

    def make(backend):
        made.append(w := Worker(backend))
        return w

    yield make
    for w in made:
        assert w.shutdown(30), "the engine thread did not end"
    assert "studio-engine" not in studio_threads()


@pytest.fixture
def make_window(qtbot, isolated):
    from studio.app import build_window
    from studio.settings import Settings

    made = []

    def make(backend, settings=None, **kw):
        w = build_window(settings or Settings(stage_results=False), backend, output_dir=str(isolated), **kw)
        qtbot.addWidget(w)
        w.show()
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()
    assert "studio-engine" not in studio_threads()


class SharedLocal:
    """The session's engine (its tiny model stays loaded) behind LocalBackend; closing it keeps the model."""

    @staticmethod
    def make(engine):
        from studio.backends.local import LocalBackend

        class _Shared(LocalBackend):
            def close(self) -> None:
                pass

        b = _Shared(device="cpu")
        b._engine = engine
        return b


def run_params(window, model: str | None = None, steps: int = 2, **kw) -> None:
    p = dict(prompt="a fault", steps=steps, seed=3, width=SIZE if model else 64, height=SIZE if model else 64)
    if model:
        p["model"] = model
    window.session.update_params(**{**p, **kw})


def save_into(out: Path):
    from studio import __version__
    from studio.core.output import save_result

    return lambda result: save_result(result, out, __version__)


# -- 1. an exception in the backend mid-run ---------------------------------------------------------------------------


class Exploding(FakeBackend):
    """The fake backend, once raising: from generate itself, or from the step callback at step k."""

    def __init__(self, where: str, k: int = 2):
        super().__init__(auto=True)
        self.where, self.k, self.armed = where, k, True

    def generate(self, request, on_step=None, cancel=None):
        if self.armed and self.where == "generate":
            self.armed = False
            raise RuntimeError('the backend broke\nTraceback (most recent call last):\n  File "x.py", line 1')
        if self.armed and self.where == "on_step" and on_step is not None:
            inner = on_step

            def on_step(info):
                if info.step == self.k and self.armed:
                    self.armed = False
                    raise KeyError("preview")
                inner(info)

        return super().generate(request, on_step, cancel)


@pytest.mark.parametrize("where", ["generate", "on_step"])
def test_a_backend_exception_is_one_line_in_the_window_and_the_next_job_runs(qtbot, make_window, isolated, where):
    with case("1. backend exception mid-run") as c:
        backend = Exploding(where, k=2)
        window = make_window(backend)
        run_params(window, steps=4)
        with qtbot.waitSignal(window.session.job_failed, timeout=LONG_MS) as failed:
            window.session.generate()
        text = c.message(failed.args[1])
        assert text.startswith("Unexpected error (")
        qtbot.waitUntil(lambda: window.banner.isVisible(), timeout=LONG_MS)
        assert c.message(window.banner.label.text()) == text
        assert c.files(isolated) == []
        with qtbot.waitSignal(window.session.result_image, timeout=LONG_MS) as done:
            window.session.generate()
        assert [str(p) for p in c.files(isolated)] == [done.args[0]]
        assert not window.banner.isVisible()


@pytest.mark.parametrize("where", ["on_step", "generate"])
def test_an_exception_inside_the_local_engine_is_one_line_and_the_engine_runs_on(
    qtbot, worker, engine, tiny_model, isolated, monkeypatch, where
):
    """The local engine: a step callback (the worker's) or the engine itself raises at step 1; the job fails with
    one line, then the same engine (model still loaded) runs the next job."""
    import studio.worker
    from studio.engine.engine import Engine

    with case("1. backend exception mid-run") as c:
        armed = [True]
        if where == "on_step":
            real_post = studio.worker.Worker._post_step

            def post(self, job, info):
                if armed[0] and info.step == 1:
                    armed[0] = False
                    raise ValueError("the preview could not be posted\nmore detail")
                real_post(self, job, info)

            monkeypatch.setattr(studio.worker.Worker, "_post_step", post)
        else:
            real_size = Engine._size_for

            def size_for(self, *a, **k):
                if armed[0]:
                    armed[0] = False
                    raise IndexError("tuple index out of range")
                return real_size(self, *a, **k)

            monkeypatch.setattr(Engine, "_size_for", size_for)
        w = worker(SharedLocal.make(engine))
        ends: list[tuple] = []
        w.failed.connect(lambda job_id, text: ends.append(("failed", text)))
        w.finished.connect(lambda job_id, out: ends.append(("finished", out)))
        r = GenerateRequest(prompt="x", model=tiny_model, steps=2, seed=1, width=SIZE, height=SIZE)
        w.submit(r, save=save_into(isolated))
        qtbot.waitUntil(lambda: len(ends) == 1, timeout=LONG_MS)
        kind, text = ends[0]
        assert kind == "failed"
        c.message(text)
        assert text in ("Generation failed: the preview could not be posted",
                        "Unexpected error (IndexError): tuple index out of range")  # fmt: skip
        w.submit(r, save=save_into(isolated))
        qtbot.waitUntil(lambda: len(ends) == 2, timeout=LONG_MS)
        assert ends[1][0] == "finished" and len(c.files(isolated)) == 1


def test_a_backend_that_raises_at_every_step_fails_each_job_and_the_queue_goes_on(qtbot, worker, isolated):
    """Three queued jobs: the one in the middle raises mid-run; the others finish, in order."""
    with case("1. backend exception mid-run") as c:

        class Middle(FakeBackend):
            def generate(self, request, on_step=None, cancel=None):
                if request.prompt == "bad":

                    def on_step(info):  # noqa: ARG001 - replaces the worker's
                        raise RuntimeError("step callback exploded")

                return super().generate(request, on_step, cancel)

        w = worker(Middle(auto=True))
        ends: list[tuple] = []
        w.failed.connect(lambda job_id, text: ends.append((job_id, text)))
        w.finished.connect(lambda job_id, out: ends.append((job_id, out.result.request.prompt)))
        ids = [
            w.submit(GenerateRequest(prompt=p, steps=2, seed=1), save=save_into(isolated)) for p in ("a", "bad", "b")
        ]
        qtbot.waitUntil(lambda: len(ends) == 3, timeout=LONG_MS)
        assert ends == [
            (ids[0], "a"),
            (ids[1], "Unexpected error (RuntimeError): step callback exploded"),
            (ids[2], "b"),
        ]
        c.message(ends[1][1])
        assert len(c.files(isolated)) == 2


# -- 2. out of memory ---------------------------------------------------------------------------------------------------


def _oom_errors():
    import torch

    return {
        "MemoryError": MemoryError(),
        "torch CUDA OutOfMemoryError": torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)\nmore"
        ),
        "CUDA error RuntimeError": RuntimeError(
            "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call"
        ),
        "MPS RuntimeError": RuntimeError(
            "MPS backend out of memory (MPS allocated: 8.00 GB, other allocations: 1.2 GB, max allowed: 9.07 GB)."
        ),
        "CPU allocator RuntimeError": RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate "
            "2359296000 bytes. Error code 12 (Cannot allocate memory)"
        ),
    }


OOM_KINDS = ["MemoryError", "torch CUDA OutOfMemoryError", "CUDA error RuntimeError", "MPS RuntimeError",
             "CPU allocator RuntimeError"]  # fmt: skip


def _raise_in_pipeline(monkeypatch, target, exc) -> None:
    """The pipeline call itself raises `exc` (the encoded prompt and the scheduler are made as in a real run)."""

    def pipe(**kwargs):
        raise exc

    cls = target if isinstance(target, type) else type(target)
    real = cls.pipeline_call

    def pipeline_call(self, model, r, seeds, plan=None, embeds=None):
        real(self, model, r, seeds, plan, embeds)
        return pipe, {}

    monkeypatch.setattr(cls, "pipeline_call", pipeline_call)


@pytest.mark.parametrize("kind", OOM_KINDS)
def test_out_of_memory_in_the_cli_is_one_line_at_exit_2(capsys, monkeypatch, tiny_model, tmp_path, kind):
    from studio.cli import main
    from studio.engine.engine import Engine

    with case("2. out of memory") as c:
        _raise_in_pipeline(monkeypatch, Engine, _oom_errors()[kind])
        out = tmp_path / "out"
        code = main(["generate", "--model", tiny_model, "--prompt", "x", "--steps", "2", "--width", str(SIZE),
                     "--height", str(SIZE), "--out", str(out), "-q"])  # fmt: skip
        stdout, err = capsys.readouterr()
        assert err.splitlines() == [c.message(f"studio: error: {OUT_OF_MEMORY}")], err
        assert code == 2 and stdout == ""
        assert c.files(out) == []


@pytest.mark.parametrize("kind", OOM_KINDS)
def test_out_of_memory_on_a_gpu_gives_the_advice_for_the_memory_settings(monkeypatch, engine, tiny_model, kind):
    """On a GPU the message names the next memory setting to try; shown as is by the window and the CLI."""
    import torch

    from studio.core.errors import EngineError
    from studio.core.memory import MemoryOptions, out_of_memory_advice

    with case("2. out of memory") as c:
        engine.load(tiny_model)  # loaded on the CPU; the run then believes it is on a GPU
        _raise_in_pipeline(monkeypatch, engine, _oom_errors()[kind])
        monkeypatch.setattr(engine, "device", torch.device("cuda"))
        memory = MemoryOptions(vae_tiling=True)
        engine.set_memory(memory)
        try:
            with pytest.raises(EngineError) as info:
                engine.generate(GenerateRequest(prompt="x", model=tiny_model, steps=2, seed=1, width=SIZE, height=SIZE))
        finally:
            engine.set_memory(MemoryOptions())
        assert c.message(str(info.value)) == out_of_memory_advice(memory, "cuda")
        assert "turn on attention slicing (Settings > Memory)" in str(info.value)


@pytest.mark.parametrize("kind", ["CPU allocator RuntimeError", "CUDA error RuntimeError"])
def test_out_of_memory_in_the_window_is_the_banner_and_the_next_run_works(
    qtbot, make_window, monkeypatch, engine, tiny_model, isolated, kind
):
    import studio.engine.engine as engine_module

    with case("2. out of memory") as c:
        real = engine_module.Engine.pipeline_call
        armed = [True]

        def pipeline_call(self, model, r, seeds, plan=None, embeds=None):
            pipe, kwargs = real(self, model, r, seeds, plan, embeds)
            if not armed[0]:
                return pipe, kwargs
            armed[0] = False

            def oom(**kw):
                raise _oom_errors()[kind]

            return oom, {}

        monkeypatch.setattr(engine_module.Engine, "pipeline_call", pipeline_call)
        window = make_window(SharedLocal.make(engine), model=tiny_model)
        run_params(window, model=tiny_model)
        with qtbot.waitSignal(window.session.job_failed, timeout=LONG_MS) as failed:
            assert window.session.generate() is not None
        assert c.message(failed.args[1]) == OUT_OF_MEMORY
        qtbot.waitUntil(lambda: window.banner.isVisible(), timeout=LONG_MS)
        assert c.message(window.banner.label.text()) == OUT_OF_MEMORY
        assert c.files(isolated) == []
        with qtbot.waitSignal(window.session.result_image, timeout=LONG_MS):
            window.session.generate()
        assert len(c.files(isolated)) == 1


# -- 3. cancel at every phase of a local run -------------------------------------------------------------------------

PHASES = ["loading", "encoding", "step 1", "decode", "save"]


@pytest.mark.parametrize("phase", PHASES)
def test_cancel_at_every_phase_of_a_local_run(qtbot, worker, engine, tiny_model, isolated, monkeypatch, phase):
    """The cancel is set from inside the phase. Loading and encoding: the run ends before its first step. Step k:
    it ends at that step. Decode and save: the run is past its last step; the image is kept whole and saved
    (nothing lost), as the CLI's save under way finishes. Either way no partial file, and the next job runs."""
    import studio.core.output
    import studio.engine.conditioning
    import studio.engine.steps
    import studio.worker
    from studio.engine.engine import Engine

    with case("3. cancel at every phase") as c:
        w = worker(SharedLocal.make(engine))
        armed = [True]

        def cancel_now() -> None:
            if armed[0]:
                armed[0] = False
                w.cancel_all()

        def after(cls_or_module, name):
            real = getattr(cls_or_module, name)

            def hooked(*a, **k):
                out = real(*a, **k)
                cancel_now()
                return out

            monkeypatch.setattr(cls_or_module, name, hooked)

        def before(cls_or_module, name):
            real = getattr(cls_or_module, name)

            def hooked(*a, **k):
                cancel_now()
                return real(*a, **k)

            monkeypatch.setattr(cls_or_module, name, hooked)

        if phase == "loading":
            after(Engine, "load")
        elif phase == "encoding":
            after(studio.engine.conditioning, "encode")
        elif phase == "step 1":
            real_post = studio.worker.Worker._post_step

            def post(self, job, info):
                real_post(self, job, info)
                cancel_now()

            monkeypatch.setattr(studio.worker.Worker, "_post_step", post)
        elif phase == "decode":
            after(Engine, "decode")
        else:
            before(studio.core.output, "save_image")
        sampled = []  # every sampler step that ran (the tracker's callback ends each)
        real_callback = studio.engine.steps.StepTracker.callback
        monkeypatch.setattr(studio.engine.steps.StepTracker, "callback",
                            lambda self, *a: (sampled.append(1), real_callback(self, *a))[1])  # fmt: skip
        ends: list[tuple] = []
        w.cancelled.connect(lambda job_id: ends.append(("cancelled", job_id)))
        w.failed.connect(lambda job_id, text: ends.append(("failed", text)))
        w.finished.connect(lambda job_id, out: ends.append(("finished", out)))
        r = GenerateRequest(prompt="x", model=tiny_model, steps=2, seed=1, width=SIZE, height=SIZE, preview="none")
        job = w.submit(r, save=save_into(isolated))
        qtbot.waitUntil(lambda: len(ends) == 1, timeout=LONG_MS)
        assert not armed[0], "the phase's hook never ran"
        if phase in ("loading", "encoding"):
            assert ends == [("cancelled", job)]
            assert sampled == [], "a sampler step ran after the cancel"
            assert c.files(isolated) == []
        elif phase == "step 1":
            assert ends == [("cancelled", job)] and len(sampled) == 1
            assert c.files(isolated) == []
        else:
            assert ends[0][0] == "finished" and not ends[0][1].save_error
            assert [str(p) for p in c.files(isolated)] == [str(p) for p in ends[0][1].paths]
        c.outcome()
        w.submit(r, save=save_into(isolated))  # the worker takes the next job
        qtbot.waitUntil(lambda: len(ends) == 2, timeout=LONG_MS)
        assert ends[1][0] == "finished" and len(ends[1][1].paths) == 1
        c.files(isolated)


def test_cancel_in_the_window_at_step_2_shows_cancelled_and_writes_nothing(qtbot, make_window, isolated):
    with case("3. cancel at every phase") as c:
        fake = FakeBackend()
        window = make_window(fake)
        run_params(window, steps=6)
        steps: list[int] = []
        window.session.progress.connect(lambda s, t, eta: steps.append(s))
        window.session.generate()
        fake.allow(2)
        qtbot.waitUntil(lambda: 2 in steps, timeout=LONG_MS)
        with qtbot.waitSignal(window.session.job_cancelled, timeout=LONG_MS):
            assert window.session.cancel()  # Esc / the Cancel button
        qtbot.waitUntil(lambda: not window.session.is_running(), timeout=LONG_MS)
        assert c.message(window.status_label.text()) == "Cancelled"
        assert fake.steps_run == 2 and c.files(isolated) == []


# -- 4. the window closed mid-run ------------------------------------------------------------------------------------

CLOSE_MID_RUN = textwrap.dedent(
    """
    import os, sys, threading
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication
    from studio.app import build_window
    from studio.settings import Settings

    kind, out, model = sys.argv[1], sys.argv[2], sys.argv[3] or None
    guard = threading.Timer(150, lambda: (print("HANG", flush=True), os._exit(3)))  # the run's own hang guard
    guard.daemon = True
    guard.start()
    app = QApplication([])
    if kind == "fake":
        from studio.backends.fake import FakeBackend
        backend = FakeBackend(auto=True, step_delay=0.05)
    else:
        from studio.backends.local import LocalBackend
        backend = LocalBackend(device="cpu")
    window = build_window(Settings(stage_results=False), backend, model=model, output_dir=out)
    window.show()
    size = 32 if model else 64
    window.session.update_params(prompt="closed mid-run", steps=1000, seed=1, width=size, height=size)
    closing = []

    def close():
        window.close()
        app.quit()

    def on_progress(step, total, eta):
        if step >= 2 and not closing:
            closing.append(step)
            QTimer.singleShot(0, close)

    window.session.progress.connect(on_progress)
    window.session.generate()
    code = app.exec()
    guard.cancel()
    left = [t.name for t in threading.enumerate() if t.name.startswith("studio-") and t.is_alive()]
    print("closed at step", closing, "threads left", left, flush=True)
    sys.exit(code or (4 if left or not closing else 0))
    """
)


@pytest.mark.parametrize("kind", ["fake", "local"])
def test_the_window_closed_mid_run_ends_the_job_and_the_process(tmp_path, tiny_model, kind):
    with case("4. window closed mid-run") as c:
        script = tmp_path / "close_mid_run.py"
        script.write_text(CLOSE_MID_RUN)
        out = tmp_path / "out"
        out.mkdir()
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(ROOT),
               "LATENT_STUDIO_CONFIG_DIR": str(tmp_path / "config"), "LATENT_STUDIO_DATA_DIR": str(tmp_path / "data"),
               "STUDIO_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
        model = tiny_model if kind == "local" else ""
        p = subprocess.run([sys.executable, str(script), kind, str(out), model], capture_output=True, text=True,
                           env=env, timeout=240, cwd=tmp_path)  # fmt: skip
        if "Traceback" in p.stderr:
            c.row.tracebacks += 1
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert "threads left []" in p.stdout and "HANG" not in p.stdout
        assert "Traceback" not in p.stderr, p.stderr
        assert c.files(out) == []  # the job ended: no image, half-written or whole, and no .tmp
        c.outcome()


# -- 5. absurd numbers, refused before any work with the limit named -------------------------------------------------

NAN, INF = math.nan, math.inf
IMG = np.zeros((64, 64, 3), np.uint8)
MASK = np.full((64, 64), 255, np.uint8)
MODES_EXTRA = {
    "txt2img": {},
    "img2img": {"init_image": IMG},
    "inpaint": {"init_image": IMG, "mask": MASK},
    "upscale": {"init_image": IMG, "upscale_mode": "resize"},
}

# (mode, flat field, value, the limit the message must name)
ABSURD = [
    *(("txt2img", f, v, "8 to 4096") for f in ("width", "height") for v in (0, -8, 7, 100_000, NAN, INF, -INF)),
    ("txt2img", "width", 100, "multiple of 8"),
    *(("txt2img", "steps", v, "between 1 and 1000") for v in (0, -1, 10**9, NAN, INF)),
    *(("txt2img", "cfg", v, "between 0 and 100") for v in (NAN, INF, -INF, -1, 1e9)),
    *(("txt2img", "batch", v, "between 1 and 64") for v in (0, -1, 1000, NAN)),
    *(("txt2img", "seed", v, "between 0 and 4294967295") for v in (-1, 2**40, NAN)),
    *(("txt2img", "clip_skip", v, "between 1 and 12") for v in (0, 100, NAN)),
    *((m, "strength", v, "(0, 1]") for m in ("img2img", "inpaint") for v in (0, 1.5, -0.5, NAN, INF)),
    *(("inpaint", "mask_blur", v, "between 0 and 256") for v in (-1, 10**9, NAN, INF)),
    *(("inpaint", "inpaint_padding", v, "between 0 and 1024") for v in (-1, 10**9, NAN)),
    *(("upscale", "scale", v, "between 1 and 8") for v in (0, 0.5, 100, NAN, INF, -INF)),
    *(("upscale", "tile", v, "between 64 and 4096") for v in (7, -64, 10**9, NAN, INF)),
    *(("upscale", "tile_overlap", v, "between 0 and 512") for v in (-1, 10**6, NAN)),
    *(("upscale", "width", v, "8 to 8192") for v in (0, 100_000, NAN)),
    *(("txt2img", "loras", ((("x", v),)), "between -10 and 10") for v in (NAN, INF, 1e9)),
]


@pytest.mark.parametrize("mode, name, value, limit", ABSURD, ids=[f"{m}-{n}={v}" for m, n, v, _ in ABSURD])
def test_validate_refuses_an_absurd_number_naming_the_limit(mode, name, value, limit):
    with case("5. absurd numbers") as c:
        fields = {"mode": mode, "prompt": "x", **MODES_EXTRA[mode], name: value}
        if mode == "upscale" and name == "width":
            fields["height"] = 64
        with pytest.raises(RequestError) as info:
            GenerateRequest.from_fields(**fields).validate()
        assert limit in c.message(str(info.value)), str(info.value)


def _no_work(monkeypatch) -> list[str]:
    """Anything that would load a model or start a run records itself (and fails the run)."""
    import studio.backends.local
    import studio.engine.engine

    work: list[str] = []

    def refuse(what):
        def f(*a, **k):
            work.append(what)
            raise AssertionError(f"{what} before the numbers were checked")

        return f

    monkeypatch.setattr(studio.engine.engine.Engine, "load", refuse("Engine.load"))
    monkeypatch.setattr(studio.backends.local.LocalBackend, "generate", refuse("LocalBackend.generate"))
    return work


CLI_ABSURD = [
    *(("generate", [f"--{f}={v}"], "8 to 4096") for f in ("width", "height") for v in ("0", "-8", "7", "100000")),
    *(("generate", [f"--steps={v}"], "between 1 and 1000") for v in ("0", str(10**9))),
    *(("generate", [f"--cfg={v}"], "between 0 and 100") for v in ("nan", "inf", "-inf", "-1")),
    *(("generate", [f"--batch={v}"], "between 1 and 64") for v in ("0", "1000")),
    *(("generate", [f"--seed={v}"], "between 0 and 4294967295") for v in ("-1", str(2**40))),
    *(("img2img", [f"--strength={v}"], "(0, 1]") for v in ("0", "1.5", "nan", "inf")),
    *(("inpaint", [f"--mask-blur={v}"], "between 0 and 256") for v in ("-1", str(10**9))),
    ("inpaint", ["--mask-blur=nan"], "invalid int value"),
    *(("upscale", [f"--scale={v}"], "between 1 and 8") for v in ("0", "nan", "inf")),
    *(("upscale", [f"--tile={v}"], "between 64 and 4096") for v in ("7", str(10**9))),
    ("upscale", ["--overlap=-1"], "between 0 and 512"),
]


@pytest.mark.parametrize("command, extra, limit", CLI_ABSURD, ids=[f"{c}{' '.join(e)}" for c, e, _ in CLI_ABSURD])
def test_the_cli_refuses_an_absurd_number_before_any_work(capsys, monkeypatch, tmp_path, command, extra, limit):
    from studio.cli import main

    with case("5. absurd numbers") as c:
        work = _no_work(monkeypatch)
        image, mask = tmp_path / "in.png", tmp_path / "mask.png"
        Image.fromarray(IMG).save(image)
        Image.fromarray(MASK).save(mask)
        out = tmp_path / "out"
        argv = [command, "--prompt", "x", "--out", str(out), "-q"]
        argv += {"img2img": ["--image", str(image)], "inpaint": ["--image", str(image), "--mask", str(mask)],
                 "upscale": ["--image", str(image), "--mode", "resize"]}.get(command, [])  # fmt: skip
        try:
            code = main(argv + extra)
        except SystemExit as e:  # argparse's own refusal (a word where a number goes): one line, exit 2
            code = e.code
        stdout, err = capsys.readouterr()
        (line,) = err.splitlines()
        assert limit in c.message(line) and line.startswith("studio: error:"), err
        assert code == 2 and stdout == "" and work == []
        assert not out.exists()


def test_a_nan_cfg_in_a_real_process_is_one_line_at_exit_2(tmp_path):
    with case("5. absurd numbers") as c:
        p = subprocess.run([sys.executable, "-m", "studio", "generate", "--prompt", "x", "--cfg", "nan", "--out",
                            str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
        if "Traceback" in p.stderr:
            c.row.tracebacks += 1
        assert p.returncode == 2 and p.stdout == ""
        assert p.stderr.splitlines() == [c.message("studio: error: CFG scale must be between 0 and 100, got nan")]
        assert not (tmp_path / "out").exists()

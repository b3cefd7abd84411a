"""The worker alone: queue order, cancel, errors, coalesced previews, shutdown."""

import threading

from studio.backends.fake import FakeBackend
from studio.core.requests import GenerateRequest
from studio.worker import Worker


def req(prompt, steps=3, **kw):
    return GenerateRequest(prompt=prompt, steps=steps, seed=1, **kw)


def test_jobs_run_in_submit_order_on_one_engine_thread(qtbot, worker):
    fake = FakeBackend(auto=True)
    w = worker(fake)
    done = []
    w.finished.connect(lambda job_id, out: done.append((job_id, out.result.request.prompt)))
    ids = [w.submit(req(p)) for p in ("a", "b", "c")]
    qtbot.waitUntil(lambda: len(done) == 3)
    assert done == list(zip(ids, "abc", strict=True))
    assert [r.prompt for r in fake.requests] == ["a", "b", "c"]
    assert set(fake.thread_names) == {"studio-engine"}


def test_cancel_running_job_stops_at_next_step(qtbot, worker):
    fake = FakeBackend()
    w = worker(fake)
    steps, finished = [], []
    w.step.connect(lambda job_id, info: steps.append(info.step))
    w.finished.connect(lambda *a: finished.append(a))
    job = w.submit(req("x", steps=10))
    fake.allow(2)
    qtbot.waitUntil(lambda: 2 in steps)
    with qtbot.waitSignal(w.cancelled) as blocker:
        assert w.cancel(job)
    assert blocker.args == [job]
    assert fake.steps_run == 2
    assert not finished


def test_cancel_queued_job_is_dropped_at_once(qtbot, worker):
    fake = FakeBackend()
    w = worker(fake)
    first = w.submit(req("first"))
    second = w.submit(req("second"))
    with qtbot.waitSignal(w.cancelled) as blocker:
        assert w.cancel(second)
    assert blocker.args == [second]
    assert [j.id for j in w.jobs()] == [first]
    with qtbot.waitSignal(w.finished):
        fake.run_free()
    assert [r.prompt for r in fake.requests] == ["first"]


def test_engine_error_becomes_a_message(qtbot, worker):
    w = worker(FakeBackend(auto=True, fail="Model not found: /nowhere"))
    with qtbot.waitSignal(w.failed) as blocker:
        job = w.submit(req("x"))
    assert blocker.args == [job, "Model not found: /nowhere"]


def test_unexpected_exception_is_one_readable_line(qtbot, worker):
    class Broken(FakeBackend):
        def generate(self, *a, **k):
            raise RuntimeError("CUDA exploded\nTraceback (most recent call last): ...")

    w = worker(Broken())
    with qtbot.waitSignal(w.failed) as blocker:
        w.submit(req("x"))
    assert blocker.args[1] == "Unexpected error (RuntimeError): CUDA exploded"


def test_engine_that_cannot_start_fails_jobs_with_a_message(qtbot):
    backend = FakeBackend(auto=True)
    backend.start_error = ImportError("No module named 'torch'")
    w = Worker(backend)
    with qtbot.waitSignal(w.failed) as blocker:
        w.submit(req("x"))
    assert "Could not start the engine" in blocker.args[1] and "torch" in blocker.args[1]
    assert w.shutdown(10)


def test_previews_coalesce_when_the_ui_is_behind(qtbot, worker):
    fake = FakeBackend()
    w = worker(fake)
    got = []
    w.step.connect(lambda job_id, info: got.append((info.step, int(info.preview[0, 0, 0]))))
    ended = threading.Event()
    finished = []
    w.finished.connect(lambda *a: finished.append(a))
    original = fake.generate

    def generate(*a, **k):
        try:
            return original(*a, **k)
        finally:
            ended.set()

    fake.generate = generate
    w.submit(req("x", steps=6))
    fake.run_free()
    assert ended.wait(10)  # all six steps happened while this (UI) thread handled no events
    qtbot.waitUntil(lambda: len(finished) == 1)
    assert got == [(6, 106)]  # only the newest preview reached the UI


def test_shutdown_cancels_running_and_queued_and_joins(qtbot, worker):
    fake = FakeBackend()
    w = Worker(fake)
    cancelled = []
    w.cancelled.connect(cancelled.append)
    running = w.submit(req("a", steps=50))
    queued = w.submit(req("b"))
    fake.allow(1)
    qtbot.waitUntil(lambda: fake.steps_run == 1)
    assert w.shutdown(10)
    assert not w.is_alive()
    assert "studio-engine" not in [t.name for t in threading.enumerate()]
    qtbot.waitUntil(lambda: running in cancelled)
    assert queued in cancelled


def test_coalescing_keeps_the_last_preview_of_every_part(qtbot, worker):
    from studio.core.requests import GenerateResult, StepInfo

    ended = threading.Event()

    class Parts(FakeBackend):
        def generate(self, request, on_step=None, cancel=None):
            for part in (1, 2, 3):
                for step in (1, 2, 3):
                    on_step(StepInfo(step, 3, 0.0, None, stage="tile", part=part, parts=3))
            ended.set()
            return GenerateResult([], request, [], cancelled=True)

    w = worker(Parts(auto=True))
    got = []
    w.step.connect(lambda job_id, info: got.append((info.part, info.step)))
    with qtbot.waitSignal(w.cancelled):
        w.submit(req("x"))
        assert ended.wait(10)  # all nine steps happened while this (UI) thread handled no events
    assert got == [(1, 3), (2, 3), (3, 3)]

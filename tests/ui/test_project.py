"""Project files: a document saved and opened equal, damaged files refused whole, the quit question, the title, recents."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QImage, QKeySequence

from studio.qimage import array_to_qimage, qimage_to_array
from studio.session import project
from studio.session.autosave import pending_restore
from studio.settings import Settings


def make_image(w: int, h: int, seed: int) -> QImage:
    return array_to_qimage(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def pixels(img: QImage | None) -> np.ndarray | None:
    return None if img is None else qimage_to_array(img, alpha=True)


def paint(doc, rect, value: int) -> None:
    """One brush stroke: in-place writes into the working mask, as the canvas does."""
    m = doc.begin_stroke()
    x, y, w, h = rect
    m[y : y + h, x : x + w] = value
    doc.stroke_updated(rect)
    doc.end_stroke()


def snapshot(doc):
    return (pixels(doc.image), None if doc.mask is None else doc.mask.copy())


def same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


def same_state(a, b) -> bool:
    return same(a[0], b[0]) and same(a[1], b[1])


def walk(doc) -> list:
    """Every state the history reaches, from the oldest to the newest (the cursor is put back after)."""
    h = doc.history
    start = h.cursor
    while doc.undo():
        pass
    states = [snapshot(doc)]
    while doc.redo():
        states.append(snapshot(doc))
    while h.cursor > start:
        doc.undo()
    return states


def build_document(window) -> None:
    """An image, a painted mask, a result over it and a stroke undone: 3 undo steps and 1 redo step."""
    s, doc = window.session, window.session.document
    doc.set_image(make_image(96, 64, 1), record="Open image")  # 1
    paint(doc, (10, 8, 30, 20), 255)  # 2: creates the mask
    doc.set_image(make_image(96, 64, 2), caption="result", record="Result")  # 3: same size, the mask stays
    paint(doc, (50, 30, 20, 20), 128)  # 4, undone below: a redo step
    doc.undo()
    doc.set_selection((4, 6, 40, 30))
    s.update_params(prompt="a lighthouse at dusk", negative_prompt="blurry", steps=13, seed=4242, cfg=5.5,
                    mode="inpaint", mask_blur=9, strength=0.6)  # fmt: skip


PARAM_FIELDS = ("prompt", "negative_prompt", "steps", "seed", "cfg", "mode", "mask_blur", "strength")


def test_a_document_saved_and_opened_is_the_same_document(qtbot, make_window, tmp_path):
    first = make_window()
    build_document(first)
    doc = first.session.document
    states = walk(doc)
    assert len(states) == 5 and doc.history.cursor == 3
    doc.set_selection((4, 6, 40, 30))  # (the walk went through the empty start, which has none)
    target = tmp_path / "lighthouse"
    first.project.choose_save_path = lambda: target
    with qtbot.waitSignal(first.project.saved):  # written off the UI thread
        first.project.save_action.trigger()  # Ctrl+S on a document saved nowhere yet: Save as
    saved = tmp_path / "lighthouse.lsproj"
    assert saved.is_file() and first.project.path == saved
    names = zipfile.ZipFile(saved).namelist()
    assert "project.json" in names and all(n.endswith(".png") for n in names if n != "project.json")
    manifest = json.loads(zipfile.ZipFile(saved).read("project.json"))
    assert (manifest["version"], manifest["size"], manifest["cursor"]) == (1, [96, 64], 3)
    assert [la["image"] for la in manifest["layers"]] == [manifest["current"]["image"]]

    second = make_window()
    assert second.project.open(saved)
    fresh = second.session.document
    assert same_state(snapshot(fresh), snapshot(doc))  # image and mask, pixel for pixel
    assert (fresh.history.cursor, len(fresh.history.entries)) == (3, 4)
    assert [e.label for e in fresh.history.entries] == [e.label for e in doc.history.entries]
    assert fresh.selection == (4, 6, 40, 30)
    assert second.windowTitle().startswith("lighthouse — ") and not second.project.is_dirty()
    assert all(same_state(a, b) for a, b in zip(walk(fresh), states, strict=True))  # undo/redo: the same states
    for name in PARAM_FIELDS:
        assert getattr(second.session.params, name) == getattr(first.session.params, name), name
    assert second.prompt_panel.prompt.toPlainText() == "a lighthouse at dusk"  # the panel shows them


def test_a_project_made_before_a_stroke_and_reopened_walks_back_to_an_empty_mask(make_window, tmp_path):
    w = make_window()
    doc = w.session.document
    doc.set_image(make_image(32, 24, 3), record="Open image")
    paint(doc, (0, 0, 8, 8), 255)
    assert w.project.save_to(tmp_path / "p.lsproj")
    other = make_window()
    assert other.project.open(tmp_path / "p.lsproj")
    d = other.session.document
    assert d.undo() == "Brush stroke" and d.mask is None
    assert d.redo() and same(d.mask, doc.mask)


def _valid_project(tmp_path) -> tuple[Path, dict, dict[str, bytes]]:
    from studio.session.document import Document

    doc = Document()
    doc.set_image(make_image(24, 16, 5), record="Open image")
    paint(doc, (2, 2, 5, 5), 255)
    path = project.save(tmp_path / "good.lsproj", doc, {"prompt": "x"})
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    return path, json.loads(files["project.json"]), files


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def _damaged(kind: str, tmp_path: Path) -> Path:
    good, m, files = _valid_project(tmp_path)
    out = tmp_path / f"{kind}.lsproj"
    img = m["current"]["image"]
    if kind == "truncated":
        out.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "not a zip":
        out.write_bytes(b"PK\x03\x04 this is no zip" * 10)
    elif kind == "empty":
        out.write_bytes(b"")
    elif kind == "bad crc":  # a flipped byte inside a stored PNG
        data = bytearray(good.read_bytes())
        at = data.find(files[img]) + 40
        data[at] ^= 0xFF
        out.write_bytes(bytes(data))
    elif kind == "path traversal":
        m["current"]["image"] = "../../evil.png"
        _zip(out, {**files, "../../evil.png": files[img], "project.json": json.dumps(m).encode()})
    elif kind == "missing member":
        _zip(out, {n: d for n, d in files.items() if n != img})
    elif kind == "newer version":
        _zip(out, {**files, "project.json": json.dumps({**m, "version": 99}).encode()})
    elif kind == "cursor outside":
        _zip(out, {**files, "project.json": json.dumps({**m, "cursor": 7}).encode()})
    elif kind == "not json":
        _zip(out, {**files, "project.json": b"{not json"})
    elif kind == "a png that lies":  # a member that is no PNG
        _zip(out, {**files, img: b"\x89PNG\r\n\x1a\n garbage"})
    elif kind == "wrong size":  # the manifest says another size than the image has
        m["current"]["size"] = [25, 16]
        _zip(out, {**files, "project.json": json.dumps(m).encode()})
    elif kind == "no manifest":
        _zip(out, {n: d for n, d in files.items() if n != "project.json"})
    else:
        raise AssertionError(kind)
    return out


DAMAGE = ["truncated", "not a zip", "empty", "bad crc", "path traversal", "missing member", "newer version",
          "cursor outside", "not json", "a png that lies", "wrong size", "no manifest"]  # fmt: skip


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_project_is_one_line_and_the_document_stays(make_window, tmp_path, kind):
    w = make_window()
    build_document(w)
    doc = w.session.document
    before, entries, cursor = snapshot(doc), list(doc.history.entries), doc.history.cursor
    w.project.ask = lambda doing: pytest.fail("a document is only given up for a project that reads")
    w.project.is_dirty = lambda: False  # (no question: the file is what is tested)
    bad = _damaged(kind, tmp_path)
    assert not w.project.open(bad)
    text = w.banner.label.text()
    assert w.banner.isVisible() and text.startswith(f"Could not open {bad.name}: ") and "\n" not in text
    assert same_state(snapshot(doc), before) and doc.history.entries == entries and doc.history.cursor == cursor
    assert w.project.path is None and doc.selection == (4, 6, 40, 30)
    assert not (tmp_path.parent / "evil.png").exists() and not (tmp_path / "evil.png").exists()


def test_an_image_past_the_pixel_limit_is_refused_from_its_header(make_window, tmp_path, monkeypatch):
    good, _, _ = _valid_project(tmp_path)
    monkeypatch.setattr(project, "MAX_PIXELS", 24 * 16 - 1)
    with pytest.raises(project.ProjectError, match="too large"):
        project.load(good)
    monkeypatch.setattr(project, "MAX_PIXELS", 24 * 16)
    assert project.load(good).state.image.size().width() == 24


def test_a_project_keeps_no_path_of_the_artists_disk(tmp_path):
    from studio.session.document import Document

    doc = Document()
    doc.set_image(make_image(8, 8, 1), path=tmp_path / "secret" / "photo.png", record="Open image")
    saved = project.save(tmp_path / "share.lsproj", doc, {})
    assert "secret" not in zipfile.ZipFile(saved).read("project.json").decode()
    loaded = project.load(saved)
    assert loaded.state.path is None and loaded.state.caption == "photo.png"


# -- the quit question ---------------------------------------------------------------------------------------


def _dirty_window(make_window):
    w = make_window()
    w.session.document.set_image(make_image(40, 30, 7), record="Open image")
    paint(w.session.document, (1, 1, 9, 9), 255)
    assert w.project.is_dirty()
    return w


def test_cancel_keeps_the_window_and_the_document(make_window, tmp_path):
    w = _dirty_window(make_window)
    asked = []
    w.project.ask = lambda doing: asked.append(doing) or "cancel"
    before = snapshot(w.session.document)
    assert not w.close()
    assert asked == ["closing"] and w.isVisible() and not w._closed
    assert same_state(snapshot(w.session.document), before) and not list(tmp_path.rglob("*.lsproj"))
    # Opening another project asks too; Cancel keeps this one.
    other = tmp_path / "other.lsproj"
    project.save(other, w.session.document, {})
    paint(w.session.document, (20, 20, 5, 5), 255)
    before = snapshot(w.session.document)
    assert not w.project.open(other)
    assert asked[-1] == "opening another project" and same_state(snapshot(w.session.document), before)
    w.project.ask = lambda doing: "discard"


def test_save_writes_the_project_then_closes(make_window, tmp_path):
    w = _dirty_window(make_window)
    w.project.ask = lambda doing: "save"
    target = tmp_path / "kept.lsproj"
    w.project.choose_save_path = lambda: target
    expected = snapshot(w.session.document)
    assert w.close() and not w.isVisible()
    assert same_state(snapshot_of(project.load(target).state), expected)
    # A Save whose dialog is cancelled does not close.
    w2 = _dirty_window(make_window)
    w2.project.ask = lambda doing: "save"
    w2.project.choose_save_path = lambda: None
    assert not w2.close() and w2.isVisible()
    w2.project.ask = lambda doing: "discard"


def snapshot_of(state):
    return (pixels(state.image), None if state.mask is None else state.mask.copy())


def test_discard_closes_without_writing_and_the_autosave_closes_clean(make_window, tmp_path):
    w = _dirty_window(make_window)
    folder = tmp_path / "autosave"
    w.start_autosave(folder, ask=lambda info: False)
    w.project.ask = lambda doing: "discard"
    w.project.choose_save_path = lambda: pytest.fail("Discard writes no project")
    assert w.close() and not w.isVisible()
    assert not list(tmp_path.rglob("*.lsproj"))
    assert (folder / "current" / "manifest.json").is_file() and pending_restore(folder) is None  # a clean close


def test_a_document_without_an_image_never_asks(make_window):
    w = make_window()
    w.project.ask = lambda doing: pytest.fail("nothing to lose: no question")
    assert w.close()


# -- title, shortcuts, drop, recents --------------------------------------------------------------------------


def test_the_title_names_the_project_and_stars_unsaved_changes(make_window, tmp_path):
    w = make_window()
    doc = w.session.document
    assert "*" not in w.windowTitle() and "Untitled" not in w.windowTitle()
    doc.set_image(make_image(40, 30, 7), record="Open image")
    assert w.windowTitle().startswith("Untitled* — Latent Studio")
    assert w.project.save_to(tmp_path / "harbour.lsproj")
    assert w.windowTitle().startswith("harbour — ")
    paint(doc, (1, 1, 4, 4), 255)
    assert w.windowTitle().startswith("harbour* — ")
    doc.undo()  # back where it was saved
    assert w.windowTitle().startswith("harbour — ")
    doc.redo()
    assert w.windowTitle().startswith("harbour* — ")
    doc.undo()
    paint(doc, (5, 5, 4, 4), 255)  # undo then a new step: the same cursor, another document
    assert w.windowTitle().startswith("harbour* — ")
    assert w.project.save_to(tmp_path / "harbour.lsproj")
    w.session.update_params(prompt="a harbour at night")  # the project keeps the panel: an edit is unsaved
    assert w.windowTitle().startswith("harbour* — ")
    w.session.update_params(prompt=w.project._saved_extra[0]["prompt"])
    assert w.windowTitle().startswith("harbour — ")
    doc.set_selection((2, 2, 10, 10))  # and the selection
    assert w.windowTitle().startswith("harbour* — ")
    w.project.ask = lambda doing: "discard"


def test_ctrl_s_saves_the_project_and_the_image_export_keeps_a_shortcut(qtbot, make_window, tmp_path):
    w = make_window()
    assert w.project.save_action.shortcut() == QKeySequence(QKeySequence.StandardKey.Save)
    assert w.save_action.shortcut() == QKeySequence("Ctrl+Shift+E") and w.save_action.text() == "&Export image…"
    keys = [k for act in w.actions() for k in act.shortcuts() if not k.isEmpty()]
    assert len(keys) == len(set(keys))  # no two actions share a key
    doc = w.session.document
    doc.set_image(make_image(16, 16, 2), record="Open image")
    assert w.project.save_to(tmp_path / "a.lsproj")
    paint(doc, (0, 0, 3, 3), 255)
    w.project.choose_save_path = lambda: pytest.fail("a saved project saves in place")
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow)  # (window shortcuts need an active window)
    w.prompt_panel.prompt.setFocus()
    with qtbot.waitSignal(w.project.saved):
        qtbot.keyClick(w.prompt_panel.prompt, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert same(project.load(tmp_path / "a.lsproj").state.mask, doc.mask) and not w.project.is_dirty()


def test_dropping_a_project_opens_it(make_window, tmp_path):
    good, _, _ = _valid_project(tmp_path)
    w = make_window()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(good))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)  # fmt: skip
    w.dropEvent(event)
    assert w.session.document.size() == (24, 16) and w.project.path == good.resolve()
    assert w.session.params.prompt == "x"


def test_recent_projects_newest_first_capped_and_missing_ones_dropped(make_window, tmp_path, config_dir):
    w = make_window()
    doc = w.session.document
    doc.set_image(make_image(8, 8, 1), record="Open image")
    paths = [tmp_path / f"p{i}.lsproj" for i in range(10)]
    for p in paths:
        assert w.project.save_to(p)
    recent = w.settings.recent_projects
    assert recent == [str(p.resolve()) for p in reversed(paths)][: project.RECENT_COUNT]
    assert w.project.open(paths[5])  # opened again: first
    assert w.settings.recent_projects[0] == str(paths[5].resolve()) and len(w.settings.recent_projects) == 8
    assert Settings.load(config_dir).recent_projects == w.settings.recent_projects  # kept in the settings file
    paths[9].unlink()
    paths[7].unlink()
    w.project.fill_recent_menu()
    titles = [a.text() for a in w.project.recent_menu.actions()]
    assert titles == ["&1 p5.lsproj", "&2 p8.lsproj", "&3 p6.lsproj", "&4 p4.lsproj", "&5 p3.lsproj", "&6 p2.lsproj"]
    assert "p9.lsproj" in w.status_label.text() and "p7.lsproj" in w.status_label.text()
    assert str(paths[9].resolve()) not in w.settings.recent_projects
    w.project.recent_menu.actions()[1].trigger()  # Open recent > p8
    assert w.project.path == paths[8].resolve()


def test_a_save_the_disk_refuses_keeps_the_old_file_whole(make_window, tmp_path, monkeypatch):
    w = make_window()
    doc = w.session.document
    doc.set_image(make_image(32, 32, 4), record="Open image")
    target = tmp_path / "keep.lsproj"
    assert w.project.save_to(target)
    before = target.read_bytes()
    paint(doc, (0, 0, 16, 16), 255)

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(project, "png_bytes", full)
    assert not w.project.save_to(target)
    text = w.banner.label.text()
    assert text == "Could not save the project: could not write keep.lsproj: No space left on device"
    assert target.read_bytes() == before  # no half file, no stray temporary file beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config", "keep.lsproj", "out"]
    assert w.project.is_dirty() and w.windowTitle().startswith("keep* — ")
    w.project.ask = lambda doing: "discard"


# -- saving off the UI thread ---------------------------------------------------------------------------------


def test_a_save_is_written_off_the_ui_thread_and_a_second_one_waits_its_turn(qtbot, make_window, tmp_path,
                                                                            monkeypatch):  # fmt: skip
    import threading

    w = make_window()
    doc = w.session.document
    doc.set_image(make_image(64, 48, 3), record="Open image")
    gate, threads = threading.Event(), []
    real_write = project.write

    def slow_write(path, snap):
        threads.append(threading.current_thread())
        assert gate.wait(30)  # held until the test lets it go: the UI thread runs meanwhile
        return real_write(path, snap)

    monkeypatch.setattr(project, "write", slow_write)
    target = tmp_path / "big.lsproj"
    w.project.choose_save_path = lambda: target
    w.project.save_action.trigger()  # returns at once: the write waits on the gate
    assert w.project.is_saving() and not target.exists()
    assert w.status_label.text() == "Saving big.lsproj…"
    paint(doc, (0, 0, 4, 4), 255)  # the artist goes on working while it saves
    assert not w.project.save_to(tmp_path / "other.lsproj", wait=False)  # a second save is refused, said
    assert w.status_label.text().startswith("Still saving big.lsproj")
    with qtbot.waitSignal(w.project.saved) as blocker:
        gate.set()
    assert blocker.args == [str(target)] and threads[0] is not threading.main_thread()
    assert project.load(target).state.mask is None  # the document as it was when the save began...
    assert w.project.is_dirty() and w.windowTitle().startswith("big* — ")  # ...so the stroke since is unsaved
    assert w.status_label.text() == "Saved big.lsproj" and not (tmp_path / "other.lsproj").exists()


def test_quit_waits_for_a_save_being_written(qtbot, make_window, tmp_path, monkeypatch):
    import threading

    from PySide6.QtCore import QTimer

    w = make_window()
    w.session.document.set_image(make_image(32, 32, 4), record="Open image")
    gate = threading.Event()
    real_write = project.write
    monkeypatch.setattr(project, "write", lambda path, snap: (gate.wait(30), real_write(path, snap))[1])
    target = tmp_path / "q.lsproj"
    w.project.choose_save_path = lambda: target
    w.project.save_action.trigger()
    assert w.project.is_saving()
    QTimer.singleShot(0, gate.set)  # runs inside the close's wait: the event loop keeps turning
    w.close()
    assert target.is_file() and not w.project.is_saving() and project.load(target).state.image is not None

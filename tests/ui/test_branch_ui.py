"""Branch from here in the window, with the real engine on a tiny model: the timeline's button and right-click menu,
the panel filled with the run's parameters, branches labelled in the gallery, and the window's branch equal to the
command line's, pixel for pixel."""

from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import Qt

from studio.app import build_window
from studio.backends.local import LocalBackend
from studio.cli import main
from studio.core.metadata import branch_info
from studio.settings import Settings


def test_branch_from_here_in_the_window(qtbot, tiny_model, out_dir, tmp_path, capsys):
    window = build_window(Settings(), LocalBackend(device="cpu"), model=str(tiny_model), output_dir=str(out_dir))
    qtbot.addWidget(window)
    window.show()
    try:
        s, panel, preview = window.session, window.prompt_panel, window.preview_panel
        s.update_params(prompt="a red circle", negative_prompt="blur", steps=4, seed=21, sampler="DPM++ 2M",
                        cfg=5.0, width=32, height=32, speed="exact")  # fmt: skip
        assert not preview.branch_button.isEnabled()  # nothing run yet
        with qtbot.waitSignal(s.result_image, timeout=180_000) as parent_done:
            qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
        parent_png = Path(parent_done.args[0])
        qtbot.waitUntil(preview.timeline.isEnabled)
        preview.timeline.setValue(4)
        assert not preview.branch_button.isEnabled() and "last step" in preview.branch_button.toolTip()
        preview.timeline.setValue(2)
        menu = preview.step_menu()
        act = menu.actions()[0]
        assert act.text() == "Branch from here (step 2)" and act.isEnabled()
        s.update_params(prompt="something else", cfg=12.0)
        act.trigger()  # the menu's action: the panel gets the run's parameters back
        assert (panel.prompt.toPlainText(), s.params.cfg, s.params.seed) == ("a red circle", 5.0, 21)
        assert preview.branch_label.text() == f"Next runs: branch of {parent_png.name} at step 2"

        s.update_params(prompt="a blue square", speed="fast")  # the branch's own steps: fast (bf16 where native)
        with qtbot.waitSignal(s.result_image, timeout=180_000) as done:
            qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
        branch_png = Path(done.args[0])
        info = branch_info(branch_png)
        assert info is not None and info.label() == f"branch of {parent_png.name} at step 2"
        assert info.changes == ("prompt",)
        item = window.gallery.item(0)
        assert f"branch of {parent_png.name} at step 2" in item.toolTip()
        qtbot.waitUntil(preview.timeline.isEnabled)
        assert preview.timeline.maximum() == 4  # the parent's two steps, then the branch's own
        qtbot.mouseClick(preview.stop_branch_button, Qt.MouseButton.LeftButton)
        assert s.branch is None and not preview.branch_label.isVisible()
    finally:
        window.close()

    # The command line makes the same branch from the parent PNG (its first 2 steps recomputed at the parent's
    # speed, the rest at --speed): the same pixels.
    code = main(["generate", "--model", str(tiny_model), "--branch-from", str(parent_png), "--at-step", "2",
                 "--prompt", "a blue square", "--speed", "fast", "-q", "--out", str(tmp_path / "cli")])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    cli = np.asarray(Image.open(out.strip()).convert("RGB"))
    assert np.array_equal(cli, np.asarray(Image.open(branch_png).convert("RGB")))


def test_the_gallery_labels_branches_loaded_from_the_folder(qtbot, tmp_path):
    from studio.core.output import save_image
    from studio.ui.gallery import Gallery

    plain = "a fox\nSteps: 8, Sampler: Euler, Seed: 1, Size: 8x8"
    text = plain + ', Branch of: "00001-1.png", Branch parent hash: 0123456789, Branch step: 3, Branch changes: prompt'
    pixels = np.zeros((8, 8, 3), np.uint8)
    paths = [save_image(pixels, tmp_path / "b.png", text), save_image(pixels, tmp_path / "p.png", plain)]
    gallery = Gallery()
    qtbot.addWidget(gallery)
    gallery.load_folder(paths)
    qtbot.waitUntil(lambda: gallery.count() == 2)
    tips = {Path(gallery.item(i).data(Qt.ItemDataRole.UserRole)).name: gallery.item(i).toolTip() for i in range(2)}
    assert tips == {"b.png": "b.png\nbranch of 00001-1.png at step 3 (prompt changed)", "p.png": "p.png"}
    gallery.shutdown()

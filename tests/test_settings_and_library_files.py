"""Settings.save and library.write_png_atomic go through studio.core.atomic: whole files, no temporaries left."""

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from studio.session.library import write_png_atomic
from studio.settings import SETTINGS_FILE, Settings


def test_settings_save_writes_the_whole_file_and_nothing_else(tmp_path):
    folder = tmp_path / "new" / "config"
    s = Settings(params={"prompt": "ünïcode"}, server_token="secret")
    assert s.save(folder) == folder / SETTINGS_FILE
    assert [p.name for p in folder.iterdir()] == [SETTINGS_FILE]
    assert json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))["params"] == {"prompt": "ünïcode"}
    assert "ünïcode" in (folder / SETTINGS_FILE).read_text(encoding="utf-8")  # ensure_ascii=False, as before
    assert Settings.load(folder) == s


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_settings_stay_readable_by_their_owner_only(tmp_path):
    Settings(server_token="secret").save(tmp_path)
    assert (tmp_path / SETTINGS_FILE).stat().st_mode & 0o777 == 0o600


def test_a_failed_settings_save_raises_the_os_error_and_leaves_no_temporary(tmp_path):
    (tmp_path / SETTINGS_FILE).mkdir()  # os.replace cannot put a file there
    with pytest.raises(OSError):
        Settings().save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [SETTINGS_FILE] and (tmp_path / SETTINGS_FILE).is_dir()


def test_write_png_atomic_writes_a_plain_png_and_nothing_else(tmp_path):
    mask = np.zeros((12, 16), np.uint8)
    mask[3:9, 4:10] = 255
    dest = tmp_path / "sub" / "mask.png"
    assert write_png_atomic(mask, dest) == dest
    assert [p.name for p in dest.parent.iterdir()] == ["mask.png"]
    with Image.open(dest) as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im), mask)


def test_a_failed_png_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    dest = tmp_path / "mask.png"
    dest.write_bytes(b"the earlier mask")
    with pytest.raises(TypeError):  # an array Pillow cannot encode
        write_png_atomic(np.zeros((4, 4, 7), np.float64), dest)
    assert dest.read_bytes() == b"the earlier mask"
    assert os.listdir(tmp_path) == ["mask.png"]

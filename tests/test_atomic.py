"""studio.core.atomic: the one atomic writer. A failed write leaves the old file and no temporary file."""

import pytest

from studio.core.atomic import atomic_write, write_bytes, write_text


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_text(target, "old")
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    target = tmp_path / "a.png"
    write_bytes(target, b"old")
    with pytest.raises(type(error)), atomic_write(target) as f:
        f.write(b"half")
        raise error
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_no_overwrite_refuses_an_existing_file(tmp_path):
    target = tmp_path / "a.png"
    write_bytes(target, b"old")
    with pytest.raises(FileExistsError):
        write_bytes(target, b"new", overwrite=False)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]

import os

import pytest

from megaphi.common.checkpoints import read_latest, write_latest
from megaphi.common.files import atomic_open, atomic_write_text


def test_an_atomic_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["report.json"], "no temporary file is left behind"


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(target) as f:
            f.write("half of the new")
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(tmp_path / "a.bin", "wb") as f:
            f.write(b"x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_latest_is_written_durably_and_read_back_stripped(tmp_path):
    assert read_latest(tmp_path) is None
    write_latest(tmp_path, "step20")
    assert read_latest(tmp_path) == "step20"
    (tmp_path / "latest").write_text("step30\n")
    assert read_latest(tmp_path) == "step30"
    assert sorted(os.listdir(tmp_path)) == ["latest"]

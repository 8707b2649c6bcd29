"""Atomic output folders and files: complete or absent, one writer at a time, no debris, modes as the umask says."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from bigbird_pegasus_hub import atomic
from bigbird_pegasus_hub.atomic import OutputError, Terminated, atomic_output_file, atomic_output_folder


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def write_repo(folder: Path, text: str) -> None:
    (folder / "weights.bin").write_text(text)
    os.chmod(folder / "weights.bin", 0o600)  # as some writers do
    (folder / "sub").mkdir()
    (folder / "sub" / "file.txt").write_text(text)


@pytest.fixture(params=["exchange", "two renames"])
def replacement(request, monkeypatch):
    """Both ways of replacing a folder: Linux's atomic exchange, and the portable move-aside."""
    if request.param == "two renames":
        monkeypatch.setattr(atomic, "_renameat2", lambda: None)
    elif atomic._renameat2() is None:
        pytest.skip("this system has no renameat2")
    return request.param


def test_folder_appears_complete_with_normal_modes(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_output_folder(tmp_path / "out") as staging:
            write_repo(staging, "new")
            assert names(tmp_path) == sorted([".out.lock", staging.name])
            assert staging.name.startswith(".out.") and staging.name.endswith(".partial")
    finally:
        os.umask(umask)
    assert names(tmp_path) == ["out"]
    assert stat.S_IMODE((tmp_path / "out" / "weights.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out" / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_output_folder(tmp_path / "out") as staging:
        write_repo(staging, "new")
        raise RuntimeError("boom")
    assert names(tmp_path) == []


def test_existing_output_needs_overwrite_and_is_replaced_whole(tmp_path, replacement):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(OutputError, match="already exists"), atomic_output_folder(tmp_path / "out"):
        pass
    with atomic_output_folder(tmp_path / "out", overwrite=True) as staging:
        write_repo(staging, "new")
    assert names(tmp_path) == ["out"]
    assert names(tmp_path / "out") == ["sub", "weights.bin"]


def test_failed_overwrite_keeps_the_old_output(tmp_path, replacement):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_output_folder(tmp_path / "out", overwrite=True) as staging:
        write_repo(staging, "new")
        raise RuntimeError("boom")
    assert names(tmp_path) == ["out"] and names(tmp_path / "out") == ["old.txt"]


def test_a_file_is_never_replaced_by_a_folder(tmp_path):
    (tmp_path / "out").write_text("my notes")
    with pytest.raises(OutputError, match="is a file, not a folder"), \
            atomic_output_folder(tmp_path / "out", overwrite=True):
        pass
    assert (tmp_path / "out").read_text() == "my notes" and names(tmp_path) == ["out"]


def test_parent_that_is_a_file_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"file is a file, not a folder"), \
            atomic_output_folder(tmp_path / "file" / "sub" / "out"):
        pass
    assert names(tmp_path) == ["file"]


def test_debris_of_a_killed_writer_is_cleaned_up(tmp_path):
    # What SIGKILL leaves: a staging folder and a lock file of "out"; a staging folder of another target stays.
    (tmp_path / ".out.0123abcd.partial").mkdir()
    (tmp_path / ".out.0123abcd.partial" / "weights.bin").write_text("half")
    (tmp_path / ".out.lock").write_text("12345\n")
    (tmp_path / ".out.x.0123abcd.partial").mkdir()  # staging of a target named "out.x"
    with atomic_output_folder(tmp_path / "out") as staging:
        write_repo(staging, "new")
    assert names(tmp_path) == [".out.x.0123abcd.partial", "out"]


def test_old_output_moved_aside_by_a_killed_writer_is_put_back(tmp_path):
    # Killed between moving the old folder aside and renaming the new one in: the next writer restores the old one.
    (tmp_path / ".out.89abcdef.old").mkdir()
    (tmp_path / ".out.89abcdef.old" / "old.txt").write_text("old")
    with pytest.raises(OutputError, match="already exists"), atomic_output_folder(tmp_path / "out"):
        pass
    assert names(tmp_path) == ["out"] and names(tmp_path / "out") == ["old.txt"]


def test_a_second_writer_fails_at_once_without_overwrite(tmp_path):
    with atomic_output_folder(tmp_path / "out") as staging:
        with pytest.raises(OutputError, match=rf"out is being written by another process \(pid {os.getpid()}\)"):
            with atomic_output_folder(tmp_path / "out"):
                pass
        write_repo(staging, "first")
    assert (tmp_path / "out" / "weights.bin").read_text() == "first" and names(tmp_path) == ["out"]


def test_sigterm_inside_the_block_removes_the_staging_folder(tmp_path):
    with pytest.raises(Terminated) as stopped, atomic_output_folder(tmp_path / "out") as staging:
        write_repo(staging, "new")
        os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.code == 128 + signal.SIGTERM and stopped.value.signal_name == "SIGTERM"
    assert names(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are restored


def test_handlers_of_the_program_are_left_alone(tmp_path):
    calls = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: calls.append(signum))
    try:
        with atomic_output_folder(tmp_path / "out") as staging:
            os.kill(os.getpid(), signal.SIGHUP)
            write_repo(staging, "new")
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert calls == [signal.SIGHUP] and names(tmp_path) == ["out"]


def test_output_file_is_replaced_atomically(tmp_path):
    target = tmp_path / "model.onnx"
    with atomic_output_file(target) as staging:
        staging.write_bytes(b"one")
        assert not target.exists()
    with pytest.raises(OutputError, match="already exists"), atomic_output_file(target):
        pass
    with pytest.raises(RuntimeError), atomic_output_file(target, overwrite=True) as staging:
        staging.write_bytes(b"half")
        raise RuntimeError("boom")
    with atomic_output_file(target, overwrite=True) as staging:
        staging.write_bytes(b"two")
    assert target.read_bytes() == b"two" and names(tmp_path) == ["model.onnx"]

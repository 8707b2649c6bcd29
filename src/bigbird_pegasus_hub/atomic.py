"""Write an output folder or file so that it appears complete, or not at all (no torch import: cheap to use).

    with atomic_output_folder("my-repo", overwrite=False) as staging:
        ...  # write everything into `staging`
    # now my-repo holds exactly what was written; on any error (or Ctrl-C, SIGTERM, SIGHUP) nothing is left

How:

- The output is written into a staging folder beside the target, `.NAME.XXXXXXXX.partial` (same file system),
  and renamed into place once complete. Files and folders get the modes a plain `open()`/`mkdir()` gives them
  under the umask (0644/0755 under 022), whatever mode the library that wrote them chose.
- A lock on the target (`.NAME.lock`, removed after use) serialises its writers: a second writer fails at once
  with `OutputError`, unless `overwrite=True`, in which case it waits for the first and then replaces its output.
- Under that lock, what a writer that died (SIGKILL, power loss) left behind is cleaned up: stale staging
  folders are removed, and an old output that was moved aside is put back if the target is missing.
- An existing target is replaced in one atomic exchange of the two folders where the system has one (Linux's
  renameat2 RENAME_EXCHANGE); elsewhere the old folder is moved aside first and, should the process die before
  the new one is in place, restored by the next writer. Only folders are ever replaced, never a file.
- SIGTERM and SIGHUP (what `timeout`, CI runners and a closed ssh session send) raise `Terminated`, a
  `SystemExit` with status 128 + signal number, as SIGINT raises KeyboardInterrupt: the staging folder is removed
  before the process exits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, writers are not serialised
    fcntl = None

__all__ = ["OutputError", "Terminated", "atomic_output_file", "atomic_output_folder", "check_output_path",
           "exit_on_termination"]

TERMINATING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
STAGING_SUFFIX = ".partial"
MOVED_ASIDE_SUFFIX = ".old"


class OutputError(ValueError):
    """The output cannot be written there; the message says why and what to do."""


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived: unwind (running the clean-ups), then exit with status 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


# ----------------------------------------------------------------------------------------------------------------
# Signals.


def _raise_terminated(signum, frame):
    for other in TERMINATING_SIGNALS:  # let the clean-up finish: a second signal would interrupt it
        signal.signal(other, signal.SIG_IGN)
    raise Terminated(signum)


@contextlib.contextmanager
def exit_on_termination() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Terminated` in the main thread, so `finally` clauses run.

    Only signals left at their default action are taken over (not one the program handles itself, nor a SIGHUP
    ignored by `nohup`); the previous handlers come back afterwards. A no-op outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in TERMINATING_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            previous[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ----------------------------------------------------------------------------------------------------------------
# The output folder.


def check_output_path(out: str | os.PathLike, *, overwrite: bool = False, folder: bool = True) -> Path:
    """The cheap checks, before any long work: the target's parents can be folders, and the target may be written.

    Raises:
        OutputError: a parent is a file, the target exists without `overwrite`, or it is not what would be
            replaced (a file where a folder goes, or the reverse).
    """
    out = Path(out)
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputError(f"Cannot create {out}: {parent} is a file, not a folder. Choose another path.")
            break
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputError(f"{out} already exists: choose another path, or pass overwrite=True (--overwrite) to "
                              "replace it.")
        if folder and (out.is_symlink() or not out.is_dir()):
            raise OutputError(f"{out} is a file, not a folder: --overwrite only replaces a folder. Remove it yourself "
                              "or choose another path.")
        if not folder and (out.is_symlink() or not out.is_file()):
            raise OutputError(f"{out} is not a regular file: --overwrite only replaces a file. Remove it yourself "
                              "or choose another path.")
    return out


def atomic_output_folder(out_dir: str | os.PathLike, *, overwrite: bool = False):
    """A context manager that yields an empty staging folder; when the block ends without an error, the staging
    folder becomes `out_dir`.

    Without `overwrite`, an existing `out_dir`, or another writer of it at work, is an `OutputError`; with it, the
    old folder is replaced (after waiting for another writer to finish). See the module docstring for the rest.
    """
    return _atomic_output(Path(out_dir), overwrite=overwrite, folder=True)


def atomic_output_file(path: str | os.PathLike, *, overwrite: bool = False):
    """A context manager that yields a temporary path beside `path` to write one file to; when the block ends without
    an error, the file replaces `path` in one atomic rename. Same locking, clean-up and signals as folders."""
    return _atomic_output(Path(path), overwrite=overwrite, folder=False)


@contextlib.contextmanager
def _atomic_output(out: Path, *, overwrite: bool, folder: bool) -> Iterator[Path]:
    check_output_path(out, overwrite=overwrite, folder=folder)
    with exit_on_termination():
        _make_parents(out)
        with _writer_lock(out, wait=overwrite):
            _clean_up_after_dead_writers(out)
            check_output_path(out, overwrite=overwrite, folder=folder)  # again, now that no one else writes it
            staging = _new_sibling(out, STAGING_SUFFIX, make_folder=folder)
            try:
                yield staging
                _normalise_modes(staging)
                if folder:
                    _put_in_place(staging, out)
                else:
                    os.replace(staging, out)
            finally:
                _remove(staging)


def _make_parents(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"Cannot create the folder {out.parent} for {out} ({error.strerror or error}): choose "
                          "another path.") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write {out}: the folder {out.parent} is not writable for you. Choose another path.")


def _new_sibling(out: Path, suffix: str, *, make_folder: bool) -> Path:
    """A new `.NAME.XXXXXXXX<suffix>` beside `out`, created as an empty folder or file (modes as the umask says)."""
    while True:
        path = _unused_sibling(out, suffix)
        try:
            if make_folder:
                path.mkdir(mode=0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


def _unused_sibling(out: Path, suffix: str) -> Path:
    while True:
        path = out.with_name(f".{out.name}.{secrets.token_hex(4)}{suffix}")
        if not (path.exists() or path.is_symlink()):
            return path


def _sibling_kind(name: str, out: Path) -> str | None:
    """"partial" or "old" for a staging or moved-aside sibling of `out` (exactly: not one of another target)."""
    match = re.fullmatch(re.escape(f".{out.name}.") + r"[0-9a-f]{8}(\.partial|\.old)", name)
    return match.group(1)[1:] if match else None


def _clean_up_after_dead_writers(out: Path) -> None:
    """Called with the lock held, so every staging or moved-aside sibling belongs to a writer that died."""
    leftovers = {"partial": [], "old": []}
    with os.scandir(out.parent) as entries:
        for entry in entries:
            kind = _sibling_kind(entry.name, out)
            if kind:
                leftovers[kind].append(out.parent / entry.name)
    if leftovers["old"] and not (out.exists() or out.is_symlink()):
        # The writer died between moving the old output aside and renaming the new one in: restore the old one.
        os.rename(leftovers["old"].pop(), out)
    for path in leftovers["partial"] + leftovers["old"]:
        _remove(path)


def _put_in_place(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    if _exchange(staging, out_dir):
        return  # `staging` now holds the old folder, which the caller removes
    # No atomic exchange: move the old folder aside; if this process dies before the next rename, the next writer
    # of `out_dir` puts it back (_clean_up_after_dead_writers).
    old = _unused_sibling(out_dir, MOVED_ASIDE_SUFFIX)
    os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    _remove(old)


def _exchange(first: Path, second: Path) -> bool:
    """Swaps two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the system has no such
    call or the file system does not support it."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = _ctypes().get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _ctypes():
    import ctypes

    return ctypes


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(_ctypes().CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


def _normalise_modes(path: Path) -> None:
    """The modes a plain open()/mkdir() gives under the umask: some writers make their files private (0600)."""
    umask = _umask()
    paths = [path] if path.is_file() else [path, *path.rglob("*")]
    for item in paths:
        if item.is_symlink():
            continue
        executable = item.is_dir() or item.stat().st_mode & 0o111
        item.chmod((0o777 if executable else 0o666) & ~umask)


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ----------------------------------------------------------------------------------------------------------------
# One writer per target.


@contextlib.contextmanager
def _writer_lock(out: Path, *, wait: bool) -> Iterator[None]:
    """An exclusive lock on `.NAME.lock` beside `out`, held by one process at a time, removed on release."""
    if fcntl is None:
        yield
        return
    path = out.with_name(f".{out.name}.lock")
    descriptor = _lock_file(path, out, wait)
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding the lock: no one can hold a lock on the unlinked file
        os.close(descriptor)


def _lock_file(path: Path, out: Path, wait: bool) -> int:
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _read_pid(descriptor)
            os.close(descriptor)
            raise OutputError(
                f"{out} is being written by another process{holder} right now: wait for it to finish and choose "
                "another path, or pass overwrite=True (--overwrite) to replace its output once it is done."
            ) from None
        except BaseException:
            os.close(descriptor)
            raise
        # The previous holder removes the file on release: if it did so after we opened it, lock the new one.
        try:
            if os.path.samestat(os.fstat(descriptor), os.stat(path)):
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)


def _read_pid(descriptor: int) -> str:
    try:
        text = os.pread(descriptor, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""

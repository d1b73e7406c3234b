"""Files written atomically (a reader sees the old file or the new one, never half of one), read with bounds, and locked.

A full disk while writing is a ``DiskFull`` error whose message says so and
that the previous file is whole; a folder another process is writing is a
``FolderBusy`` error naming that process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
from pathlib import Path

MAX_JSON_BYTES = 16 * 2**20  # config.json, vocab.json, state.json, a cache index: small files
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp")  # .NAME.PID.tmp[SUFFIX], as atomic_path names them


class DiskFull(OSError):
    """No space left on the device for a file; the message says which, and what was kept."""


class FolderBusy(OSError):
    """Another process holds a folder's lock."""


def is_disk_full(error: OSError, folder) -> bool:
    """Whether ``error`` (or a library's error wrapping one) came from a full disk."""
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error):
        return True
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yields a temporary path beside ``path``; renames it onto ``path`` on success.

    Args:
        path: the file to write.
        suffix: an ending the temporary name must keep (Keras wants ``.keras``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except DiskFull:
        raise
    except OSError as error:
        if is_disk_full(error, path.parent):
            kept = "the previous one is unchanged" if path.exists() else "nothing was written"
            raise DiskFull(f"No space left on the disk to write {path} ({kept}); free some space "
                           f"and run the same command again") from None
        raise
    finally:
        temporary.unlink(missing_ok=True)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder) -> list[Path]:
    """Deletes the temporaries in ``folder`` whose writer is gone (killed mid-write); returns what it removed."""
    removed = []
    for path in Path(folder).glob(".*.tmp*"):
        match = _TEMPORARY.match(path.name)
        if path.is_file() and match and not _is_running(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class FolderLock:
    """An OS lock on a folder itself (no lock file is made); released by ``close()``, or when the process ends."""

    def __init__(self, descriptor: int):
        self.descriptor = descriptor

    def close(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)
            self.descriptor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def lock_folder(folder) -> FolderLock:
    """Takes ``folder``'s lock: ``flock`` on the folder, which dies with the process, so no stale lock is left.

    Keep the lock for as long as the folder is being written. The folder must exist.

    Raises:
        FolderBusy: another process holds the lock; the message names it where the system says (Linux).
    """
    descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise FolderBusy(f"{folder} is being written by another process ({_lock_holder(folder)}); wait for it "
                         f"to finish, stop it, or choose another folder") from None
    return FolderLock(descriptor)


def _lock_holder(folder) -> str:
    """``pid N`` of the process holding ``folder``'s flock, read from /proc/locks; a vaguer phrase elsewhere."""
    stat = os.stat(folder)
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as file:
            for line in file:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode:
                    return f"pid {fields[4]}"
    except OSError:
        pass
    return "its pid is not known here"


def write_text(path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def read_json(path, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES):
    """Reads a JSON file (UTF-8, with or without a byte-order mark), turning the usual failures into one clear error.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, larger than ``max_bytes``, not JSON, or nested too deeply to read.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a regular file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{what} {path} is {size / 2**20:.0f} MiB; files over {max_bytes / 2**20:.0f} MiB "
                         f"are not read")
    try:
        with open(path, encoding="utf-8-sig") as file:
            return json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {path} is not valid JSON: {error}") from None
    except RecursionError:
        raise ValueError(f"{what} {path} is nested too deeply to be a {what.lower()}") from None

"""The run folder: never overwritten unless asked, one writer at a time, files only inside.

``fq-plugins run -o DIR`` into a folder that already holds files is refused (``--overwrite``
replaces a previous *run* folder's files; any other folder is never emptied). A lock file
(``.fq-run.lock``, holding the writer's pid) makes a second concurrent run into the same
folder fail with "in use" instead of both exiting 0 with one report lost; a lock left by a
process that no longer exists is taken over. :func:`file_in` maps a variant name to a file
name and checks that the result stays inside the folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator

from .errors import FQError

__all__ = ["LOCK_NAME", "RUN_FILES", "atomic_write", "file_in", "locked", "prepare_folder"]

LOCK_NAME = ".fq-run.lock"
RUN_FILES = re.compile(
    r"^(report\.json|report\.html|results\.csv|recipe\.yaml|fp32(-s-?\d+)?\.pt|.+\.fqz|.+\.momos"
    r"|bits-.+\.png)(\.tmp)?$"
)
"""Files a run writes; ``--overwrite`` removes exactly these."""

_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def prepare_folder(path: str, *, overwrite: bool = False) -> str:
    """Create ``path`` for a run, or check it may be written; returns it.

    :raises FQError: ``path`` is a file or under one, cannot be created, or already holds
        files (without ``overwrite``, or ``overwrite`` on a folder that is not a run's).
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise FQError(f"output folder {path!r} is a file; give a folder path with -o")
    if os.path.isdir(path):
        entries = [e for e in os.listdir(path) if e != LOCK_NAME]
        if entries:
            if not overwrite:
                raise FQError(
                    f"output folder {path!r} already holds {len(entries)} file(s) "
                    f"({', '.join(sorted(entries)[:3])}{' …' if len(entries) > 3 else ''}); "
                    "a run never overwrites them: choose another folder, or pass --overwrite "
                    "to replace a previous run's files"
                )
            if "report.json" not in entries:
                raise FQError(
                    f"--overwrite refused: {path!r} holds files but no report.json, so it is "
                    "not a run folder; fq-plugins only replaces its own runs"
                )
            for e in entries:
                if RUN_FILES.match(e) and os.path.isfile(os.path.join(path, e)):
                    _remove(os.path.join(path, e))
        return path
    try:
        os.makedirs(path)
    except OSError as exc:
        raise FQError(f"cannot create output folder {path!r}: {exc.strerror or exc}") from None
    return path


def _remove(file: str) -> None:
    try:
        os.remove(file)
    except OSError as exc:
        raise FQError(f"--overwrite could not remove {file!r}: {exc.strerror or exc}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold the folder's lock for the duration; a second writer gets an "in use" error."""
    lock = os.path.join(path, LOCK_NAME)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(lock, encoding="utf-8") as f:
                    pid = int(f.read().strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise FQError(
                    f"output folder {path!r} is in use by another run (process {pid}); wait "
                    f"for it or choose another folder (a stale lock is {lock!r})"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)  # stale: its process is gone
            continue
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise FQError(f"cannot write in output folder {path!r}: {exc.strerror}") from None
            raise
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)


def file_in(folder: str, name: str, suffix: str = "") -> str:
    """``folder/<name><suffix>`` with ``name`` reduced to safe characters, checked inside."""
    safe = _SAFE.sub("_", name).strip(".") or "variant"
    path = os.path.join(folder, safe[:120] + suffix)
    root = os.path.realpath(folder)
    if os.path.dirname(os.path.realpath(path)) != root:
        raise FQError(f"refusing to write {path!r}: outside the run folder {folder!r}")
    return path


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> int:
    """Write ``data`` to ``path`` through ``PATH.tmp`` and a rename, so a crash or a full
    disk never leaves half a file (nor a ``.tmp``); returns the bytes written.

    :raises FQError: the write failed — naming the file and why (e.g. no space left).
    """
    path = os.fspath(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise FQError(
            f"could not write {path!r}: {exc.strerror or exc}"
            + ("; free some space and rerun with --resume" if exc.errno == errno.ENOSPC else "")
        ) from None
    return len(raw)

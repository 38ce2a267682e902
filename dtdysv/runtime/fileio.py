"""Atomic file writes, UTF-8 text reads, and the lock of a run's folder.

    with atomic_path(out) as tmp:      # renamed over ``out`` on success; removed on an exception
        write_something(tmp)

Temporaries are ``.<name>.tmp<pid><suffix>`` dot-files (``suffix`` keeps an extension, e.g. ``.png``) that
:func:`remove_temporaries` clears once their process is gone; the temporary may also be a folder. A full disk or a
read-only folder is a UserError naming the file. Text is read as UTF-8 with an optional byte-order mark; one run holds
``<folder>/.lock`` (:func:`run_lock`) while it writes there.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dtdysv.errors import UserError

log = logging.getLogger(__name__)

# A write that fails with these is the disk's or the folder's fault, not the program's: a UserError.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)")
LOCK_NAME = ".lock"


def _write_failure(err: OSError, path: Path, tmp: Path) -> bool:
    """Whether ``err`` is a failure to write ``path`` (not, say, to read a source file while writing)."""
    if err.errno not in _WRITE_ERRNOS:
        return False
    name = str(err.filename) if err.filename is not None else ""
    return not name or name.startswith(str(tmp)) or Path(name) in (path, *path.parents)


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (created if needed); rename it over ``path`` on success.

    A full disk or a folder that cannot be written is a UserError saying which file and why; ``path`` is then
    left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if not _write_failure(err, path, tmp):
            raise
        raise UserError(f"Cannot write '{path}': {err.strerror or err} [{errno.errorcode.get(err.errno, '')}]. "
                          f"Nothing was replaced: the files already in '{path.parent}' (earlier results and "
                          f"checkpoints) are intact. Free disk space or make the folder writable, then rerun; or "
                          f"write elsewhere (e.g. another --save_path).") from None
    finally:
        try:
            _remove(tmp)
        except OSError as err:  # never hide the error that brought us here
            log.warning("could not remove the temporary '%s': %s", tmp, err)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a process of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_temporaries(folder: str | Path) -> None:
    """Delete the temporaries of :func:`atomic_path` left in ``folder`` by processes that are gone (their pid is
    in the name; a running process's temporary may still be written, and is kept)."""
    for tmp in Path(folder).glob(".*.tmp*"):
        match = _TEMPORARY.match(tmp.name)
        if match and not _alive(int(match.group(1))):
            _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def read_text(path: str | Path, what: str) -> str:
    """The text of the UTF-8 file ``path`` (a leading byte-order mark dropped). ``what`` names the file in
    errors, e.g. "List file 'x' (--train_list)"; a file that is not UTF-8 is a UserError naming its line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise UserError(f"{what} is not UTF-8 text: line {line}, column {column} holds the byte "
                          f"0x{data[err.start]:02x}. Save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None


def read_lines(path: str | Path, what: str) -> list[str]:
    """The lines of the UTF-8 text file ``path`` (read_text), split at '\\n', '\\r\\n' or '\\r' as open() does."""
    return read_text(path, what).replace("\r\n", "\n").replace("\r", "\n").splitlines()


def _lock_holder(lock: Path) -> tuple[int, str]:
    """(pid, host) written in a lock file; (0, '') if unreadable."""
    try:
        pid, host = lock.read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return 0, ""


def _create_lock(lock: Path, mine: Path) -> bool:
    """Make ``lock`` a copy of ``mine`` unless it exists (then False), atomically."""
    try:
        os.link(mine, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: create it in place
        pass
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(mine.read_text())
    return True


@contextmanager
def run_lock(folder: str | Path, flag: str = "--save_path") -> Iterator[Path]:
    """Hold ``<folder>/.lock`` (holding 'pid host') while the body runs: a second process that asks for it gets a
    UserError naming the holder. A lock left by a process that is gone (on this host) is taken over, with a log
    line; a lock written on another host is respected. Released at exit."""
    folder = Path(folder)
    lock = folder / LOCK_NAME
    me = (os.getpid(), socket.gethostname())
    mine = folder / f"{LOCK_NAME}.{me[0]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        mine.write_text(f"{me[0]} {me[1]}\n")  # linked as the lock below: the lock is never seen half-written
    except OSError as err:
        raise UserError(f"Cannot write the lock file '{lock}' of {flag} '{folder}': {err.strerror or err}.") \
            from None
    try:
        for _ in range(3):  # a takeover races with other takers at most a few times
            if _create_lock(lock, mine):
                break
            holder = _lock_holder(lock)
            if holder[0] and (holder[1] != me[1] or _alive(holder[0])):
                raise UserError(f"{flag} '{folder}' is in use by process {holder[0]} on {holder[1]} (lock file "
                                  f"'{lock}'). Wait for that run to end, or choose another {flag}; if that process "
                                  f"is gone, delete '{lock}'.")
            stale = folder / f"{LOCK_NAME}.stale{me[0]}"
            try:
                os.replace(lock, stale)  # of several takers one moves the stale lock; the others find a new one
            except FileNotFoundError:
                continue
            if _lock_holder(stale) != holder:  # another taker's fresh lock was moved: put it back
                os.replace(stale, lock)
                continue
            stale.unlink()
            log.warning("taking over the lock '%s' of process %s on %s, which is gone", lock, holder[0] or "?",
                        holder[1] or "?")
        else:
            raise UserError(f"Could not take the lock '{lock}' of {flag} '{folder}': other processes keep taking "
                              f"it.")
    finally:
        mine.unlink(missing_ok=True)
    try:
        yield lock
    finally:
        if _lock_holder(lock) == me:
            lock.unlink(missing_ok=True)

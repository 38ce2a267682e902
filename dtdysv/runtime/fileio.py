"""Atomic file writes: a reader, or a rerun after a crash, sees the old file or the new one, never half of one.

    with atomic_path(out) as tmp:      # renamed over ``out`` on success; removed on an exception
        write_something(tmp)

Temporaries are ``.<name>.tmp<pid><suffix>`` dot-files (``suffix`` keeps an extension, e.g. ``.png``) that
:func:`remove_temporaries` clears; the temporary may also be a folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (created if needed); rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_temporaries(folder: str | Path) -> None:
    """Delete the temporaries of :func:`atomic_path` left in ``folder`` by a killed process."""
    for tmp in Path(folder).glob(".*.tmp*"):
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)

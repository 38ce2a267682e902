"""Dataset archives (``dataprep.py`` steps): download with resume, join split archives, unpack safely.

VoxCeleb URLs follow voxceleb_trainer's lists/fileparts.txt; ``--url_list`` ('<dataset> <url>' lines) overrides them.
Outputs are written under temporary names and renamed, so a rerun skips finished work. Archive members with absolute
paths, '..', links or special files are refused.
"""

from __future__ import annotations

import gzip
import logging
import lzma
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO

from tqdm import tqdm

from dtdysv.data.lists import offenders_message
from dtdysv.errors import UserError
from dtdysv.runtime.fileio import atomic_path, read_lines

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per read when copying streams
_VGG = "https://www.robots.ox.ac.uk/~vgg/data/voxceleb"
DOWNLOADS: dict[str, list[str]] = {
    "voxceleb1": [f"{_VGG}/vox1a/vox1_dev_wav_parta{c}" for c in "abcd"] + [f"{_VGG}/vox1a/vox1_test_wav.zip"],
    "voxceleb2": [f"{_VGG}/vox1a/vox2_dev_aac_parta{c}" for c in "abcdefgh"] + [f"{_VGG}/vox1a/vox2_test_aac.zip"],
    "trials": [f"{_VGG}/meta/{name}" for name in ("veri_test2.txt", "list_test_hard2.txt", "list_test_all2.txt")],
    "musan": ["https://www.openslr.org/resources/17/musan.tar.gz"],
    "rirs": ["https://www.openslr.org/resources/28/rirs_noises.zip"],
}
NEEDS_CREDENTIALS = ("voxceleb1", "voxceleb2")
# What a damaged archive raises while it is read: bad CRCs, cut-off compressed streams, garbage in a tar.
DAMAGED = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


class ArchiveError(UserError):
    pass


# --- download


def read_url_list(path: Path) -> dict[str, list[str]]:
    """'<dataset> <url>' lines (UTF-8) -> {dataset: [urls]}, replacing the built-in table."""
    if not path.is_file():
        raise ArchiveError(f"--url_list {path}: no such file")
    table: dict[str, list[str]] = {}
    for number, line in enumerate(read_lines(path, f"--url_list {path}"), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2:
            raise ArchiveError(f"--url_list {path}, line {number}: expected '<dataset> <url>', got {line!r}")
        table.setdefault(parts[0], []).append(parts[1])
    return table


def _fetch(url: str, dest: Path, opener: urllib.request.OpenerDirector) -> None:
    """Download ``url`` to ``dest`` through ``dest``.part, continuing a partial download when the server can."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with opener.open(request) as response:
            resumed = have > 0 and getattr(response, "status", 200) == 206
            total = int(response.headers.get("Content-Length", 0)) + (have if resumed else 0)
            with open(part, "ab" if resumed else "wb") as f, tqdm(total=total or None, initial=have if resumed else 0,
                                                                 unit="B", unit_scale=True, desc=dest.name) as bar:
                while block := response.read(CHUNK):
                    f.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as err:
        if not (err.code == 416 and have):  # 416: the partial file is already complete
            raise ArchiveError(f"Downloading {url} failed: {err}. Check --user/--password and the URL "
                               f"(--url_list).") from None
    except OSError as err:  # also urllib.error.URLError
        raise ArchiveError(f"Downloading {url} failed: {err}. Check --user/--password and the URL (--url_list); "
                           f"rerun to continue where it stopped.") from None
    part.replace(dest)


def join_parts(folder: Path) -> list[Path]:
    """Join split archives ``<stem>_partaa, _partab, ...`` into ``<stem>.zip`` (skipped when it exists)."""
    stems: dict[str, list[Path]] = {}
    for part in sorted(folder.glob("*_part??")):
        stems.setdefault(part.name[:-len("_partaa")], []).append(part)
    joined = []
    for stem, parts in stems.items():
        out = folder / f"{stem}.zip"
        if not out.exists():
            with atomic_path(out) as tmp, open(tmp, "wb") as f:
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, f, CHUNK)
            log.info("joined %d parts into %s", len(parts), out)
        joined.append(out)
    return joined


def download(out_dir: Path, datasets: Sequence[str], user: str | None, password: str | None,
             table: dict[str, list[str]] | None = None) -> list[Path]:
    """Fetch every URL of ``datasets`` into ``out_dir`` (existing files are skipped), then join split archives."""
    table = DOWNLOADS if table is None else table
    unknown = [d for d in datasets if d not in table]
    if unknown:
        raise ArchiveError(f"--datasets {' '.join(unknown)}: unknown; choose from {', '.join(table)}")
    if any(d in NEEDS_CREDENTIALS for d in datasets) and not (user and password):
        raise ArchiveError("VoxCeleb downloads need the username and password the dataset owners send on request: "
                           "give --user and --password (or the environment variable VOXCELEB_PASSWORD).")
    passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    if user and password:
        for d in datasets:
            for url in table[d]:
                passwords.add_password(None, url, user, password)
    opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(passwords))
    out_dir.mkdir(parents=True, exist_ok=True)
    for d in datasets:
        for url in table[d]:
            dest = out_dir / PurePosixPath(url.split("?")[0]).name
            if dest.exists():
                log.info("%s already downloaded: skipping", dest)
            else:
                _fetch(url, dest, opener)
    return join_parts(out_dir)


# --- extraction


def _unsafe(name: str) -> str:
    """Why an archive member name may not be extracted, or '' when it is safe."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or PureWindowsPath(name).drive:
        return "absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "'..' in the path"
    return ""


def _copy_member(src: IO[bytes], dest: Path) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        shutil.copyfileobj(src, f, CHUNK)


def extract_archive(archive: Path, out_dir: Path) -> int:
    """Unpack a zip or tar into ``out_dir``, skipping existing files of the right size; returns the files written.
    Unsafe members and damaged archives (bad CRC, truncated) are errors; members before the damage are kept."""
    if not archive.is_file():
        raise ArchiveError(f"--extract {archive}: no such file")
    try:
        return _extract(archive, out_dir)
    except DAMAGED as err:
        raise ArchiveError(f"--extract {archive}: the archive is damaged or truncated ({type(err).__name__}: {err}). "
                           f"Members extracted before the damage are kept (a rerun skips them); download the archive "
                           f"again (`dataprep.py --download` continues a partial download) and rerun.") from None


def _extract(archive: Path, out_dir: Path) -> int:
    written = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            bad = [f"{m.filename!r}: {why}" for m in members if (why := _unsafe(m.filename))]
            bad += [f"{m.filename!r}: a symbolic link" for m in members if stat.S_ISLNK(m.external_attr >> 16)]
            if bad:
                raise ArchiveError(offenders_message(f"unsafe members in '{archive}' (nothing extracted)", bad,
                                                     "Archive members must be relative paths inside the archive."))
            for m in tqdm(members, desc=archive.name, unit="file"):
                dest = out_dir / m.filename
                if m.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                elif not (dest.is_file() and dest.stat().st_size == m.file_size):
                    with zf.open(m) as src:
                        _copy_member(src, dest)
                    written += 1
        return written
    try:
        tar = tarfile.open(archive, "r:*")
    except tarfile.TarError as err:
        raise ArchiveError(f"--extract {archive}: neither a zip nor a tar archive, or one cut short before its "
                           f"index ({err}); download it again if it is truncated.") from None
    with tar, tqdm(desc=archive.name, unit="file") as bar:
        for m in tar:  # streamed: a member is checked before anything of it is written
            why = _unsafe(m.name) or ("" if m.isfile() or m.isdir() else "a link or special file")
            if why:
                raise ArchiveError(f"Unsafe member {m.name!r} in '{archive}': {why}; extraction stopped (members "
                                   f"before it were written). Archive members must be plain files and folders.")
            dest = out_dir / m.name
            if m.isdir():
                dest.mkdir(parents=True, exist_ok=True)
            elif not (dest.is_file() and dest.stat().st_size == m.size):
                _copy_member(tar.extractfile(m), dest)
                written += 1
            bar.update()
    return written

"""The Debian packages of the real-voice corpus: which files of each are recorded speech, how a voice was identified,
where its licence stands, and how a package is fetched (``apt-get download``) and unpacked (``dpkg-deb -x``).

A package's recordings come as :class:`Unit` s, one per voice. Where a package does not say who recorded what, its
documented unit is the voice (a language folder); the group of a unit is its language, so that the same language in
two packages (possibly one translator recording for both) is never taken as two different people.

Looked at and not used: gcompris-qt-data (its Qt resource files hold sound effects and music, no voices: GCompris
downloads its voices at run time), hedgewars-data (145 MB, beyond this corpus's download budget), warmux-data
(98 MB for one voice), codec2-examples (one recording per speaker), tuxtype-data and pingus-data (a few clips of one
voice).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dtdysv.errors import UserError

log = logging.getLogger(__name__)

AUDIO = (".ogg", ".wav")
# Licences that allow research use of the recordings (each alternative of a 'A or B' line is checked).
FREE_LICENCE = re.compile(r"^(L?GPL|CC-BY|CC-BY-SA|CC0|public-domain|Expat|MIT|BSD)", re.IGNORECASE)
# Language folders sharing one group although their codes differ: one language, possibly one voice.
SAME_LANGUAGE = {"nb": "no", "nn": "no"}


class SourceError(UserError):
    pass


@dataclass(frozen=True)
class Unit:
    """The recordings of one voice in one package."""

    name: str  # the speaker label: <package short name>-<folder>[-<format>]
    group: str  # units that may be one person share it
    package: str
    language: str
    session: str  # the sub-folder of its files in the corpus
    copyright_files: str  # the 'Files:' pattern of the package's copyright file that covers the recordings
    files: tuple[Path, ...]
    join_short: bool = False  # clips too short alone are joined into utterances (single syllables)


@dataclass(frozen=True)
class Source:
    package: str
    what: str  # what the recordings are
    identified: str  # how a voice was identified
    find: Callable[[Path], list[Unit]]  # the package's unpacked root -> its units
    dropped: dict[str, str] = field(default_factory=dict)  # folder -> why it is left out


def language_group(language: str) -> str:
    """'pt_BR' -> 'pt', 'sr@latin' -> 'sr', 'nn' -> 'no': the language of a folder name."""
    base = re.split(r"[_@]", language)[0].lower()
    return SAME_LANGUAGE.get(base, base)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO)


def _language_folders(root: Path, short: str, package: str, session: str, dropped: dict[str, str]) -> list[Unit]:
    units = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = _audio_files(folder)
        if folder.name in dropped or not files:
            continue
        units.append(Unit(f"{short}-{safe_name(folder.name)}", language_group(folder.name), package, folder.name,
                          session, "*", tuple(files)))
    return units


KLETTRES_DROPPED = {"es": "two speakers (the handbook credits Ana Belen Caballero and Juan Pedro Paredes)",
                    "nds": "two speakers (the handbook credits Manfred Wiese and Sonke Dibbern)",
                    "pt_BR": "two speakers (the handbook credits a father and his son)"}


def _ktuberling(root: Path) -> list[Unit]:
    return _language_folders(root / "usr/share/ktuberling/sounds", "ktuberling", "ktuberling-data", "words", {})


def _klettres(root: Path) -> list[Unit]:
    return _language_folders(root / "usr/share/klettres", "klettres", "klettres-data", "letters", KLETTRES_DROPPED)


def _gcin(root: Path) -> list[Unit]:
    folder = root / "usr/share/gcin-voice/ogg"
    return [Unit(f"gcin-{voice}", f"gcin-{voice}", "gcin-voice", "zh", "syllables", f"*/{voice}.ogg",
                 tuple(sorted(folder.glob(f"*/{voice}.ogg"))), join_short=True) for voice in ("3", "5")]


def _alsa(root: Path) -> list[Unit]:
    files = [p for p in _audio_files(root / "usr/share/sounds/alsa") if p.stem != "Noise"]
    return [Unit("alsa-en", "en", "alsa-utils", "en", "channels", "*", tuple(files))]


SOURCES = (
    Source("ktuberling-data", "single words (body parts, clothes, objects) that KTuberling speaks as a piece is "
           "placed, one folder per language", "one language folder is one voice (the package names no speakers); "
           "folders recorded in several formats are split into one unit per format", _ktuberling),
    Source("klettres-data", "the letters and syllables of an alphabet, one folder per language", "one language "
           "folder is one voice, as the KLettres handbook credits one person per language; the languages it credits "
           "to two people are left out", _klettres, KLETTRES_DROPPED),
    Source("gcin-voice", "Mandarin syllables (Zhuyin), joined into utterances of about 2 s",
           "debian/copyright names the two voices: */3.ogg Edward Der-Hua Liu, */5.ogg the voice source of Chu Lo",
           _gcin),
    Source("alsa-utils", "the channel names of speaker-test ('Front Left', ...; Noise.wav left out)",
           "one voice in one folder", _alsa),
)
PACKAGES = {source.package: source for source in SOURCES}


# ---- apt and dpkg ----------------------------------------------------------------------------------------------------


def _run(command: list[str], cwd: Path | None = None) -> str:
    if shutil.which(command[0]) is None:
        raise SourceError(f"'{command[0]}' is not installed: the corpus is built from Debian packages and needs a "
                          f"Debian or Ubuntu machine (apt-get and dpkg-deb).")
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SourceError(f"`{' '.join(command)}` failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def fetch(package: str, cache: Path) -> Path:
    """The package's .deb in ``cache/debs`` (downloaded with ``apt-get download`` unless there) and its files
    unpacked under ``cache/root/<package>``; returns that root."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        log.info("apt-get download %s", package)
        try:
            _run(["apt-get", "download", package], cwd=debs)
        except SourceError as err:
            raise SourceError(f"{err} Run `apt-get update` first if apt has no package lists; the package must be "
                              f"in Debian main (or Ubuntu's archive).") from None
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise SourceError(f"`apt-get download {package}` wrote no {package}_*.deb in '{debs}'.")
    root = cache / "root" / package
    marker = root / ".unpacked"
    if not marker.is_file() or marker.read_text() != found[-1].name:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(found[-1]), str(root)])
        marker.write_text(found[-1].name)
    return root


def deb_of(package: str, cache: Path) -> Path:
    return sorted((cache / "debs").glob(f"{package}_*.deb"))[-1]


def deb_field(deb: Path, name: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), name]).strip()


def copyright_entry(root: Path, package: str, files_pattern: str) -> dict[str, str]:
    """{'files', 'copyright', 'licence'} of the paragraph of ``/usr/share/doc/<package>/copyright`` whose 'Files:'
    field lists ``files_pattern``; a SourceError if there is none or its licence is not a free one."""
    path = root / "usr/share/doc" / package / "copyright"
    if not path.is_file():
        raise SourceError(f"'{path}' does not exist: no licence for {package}.")
    for paragraph in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
        fields: dict[str, str] = {}
        key = ""
        for line in paragraph.splitlines():
            if line[:1].isspace() and key:
                if key != "license":  # the licence's name is on its first line, its text follows
                    fields[key] += " " + line.strip()
            elif ":" in line:
                name, _, value = line.partition(":")
                key = name.strip().lower()
                fields[key] = value.strip()
        if files_pattern in fields.get("files", "").split():
            licence = fields.get("license", "")
            names = re.split(r"\s+or\s+|\s*\|\s*", licence)
            if not licence or not all(FREE_LICENCE.match(name) for name in names):
                raise SourceError(f"{package}: the licence of '{files_pattern}' in '{path}' is {licence!r}, not one "
                                  f"that the corpus accepts (GPL, LGPL, CC-BY, CC-BY-SA, CC0, public domain, ...).")
            return {"files": fields["files"], "copyright": fields.get("copyright", ""), "licence": licence}
    raise SourceError(f"'{path}' has no 'Files:' paragraph listing '{files_pattern}'.")

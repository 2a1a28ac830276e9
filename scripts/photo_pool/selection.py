"""Which files of an extracted package are photographs: the rules' patterns, allow-lists and skip lists applied.

A photo's source path is relative to the extracted package; one inside an archive is ``<archive file>!<member>``.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from pathlib import Path

import resource_archives

from photo_pool.errors import FetchError, warn
from photo_pool.rules import Rule, load_rules

ARCHIVE_SEPARATOR = "!"  # source paths inside archives: "<archive file>!<member>"

_SIZE_NAME = re.compile(r"^(\d+)x(\d+)$")


def split_source(source_path: str) -> tuple[str, str]:
    """("archive file", "member") of a source path; member "" for a plain file."""
    path, _, member = source_path.partition(ARCHIVE_SEPARATOR)
    return path, member


@functools.lru_cache(maxsize=2)
def rcc_files(path: str) -> dict[str, bytes]:
    """The files of a Qt resource archive, kept for the next call (cache_clear() once its folder goes away)."""
    return resource_archives.read_rcc(Path(path).read_bytes())


def read_source(root: Path, source_path: str) -> bytes:
    """The bytes of a selected photo: a plain file, or a member of an rcc or edj archive."""
    path, member = split_source(source_path)
    if not member:
        return (root / path).read_bytes()
    try:
        if path.endswith(".rcc"):
            return rcc_files(str(root / path))[member]
        name, data = resource_archives.edj_largest_jpeg((root / path).read_bytes())
    except (resource_archives.ArchiveError, KeyError) as e:
        raise FetchError(f"{path}: cannot read {member}: {e}") from e
    if name != member:
        raise FetchError(f"{path}: its largest JPEG is {name}, not {member}")
    return data


def _largest_sizes(paths: list[Path]) -> list[Path]:
    """Plasma: of the files in each folder named like 2560x1600.jpg, the one with the most pixels."""
    best: dict[Path, tuple[int, Path]] = {}
    for path in paths:
        if match := _SIZE_NAME.match(path.stem):
            pixels = int(match[1]) * int(match[2])
            folder = path.parents[2]
            best[folder] = max(best.get(folder, (0, path)), (pixels, path))
    return [path for _, path in best.values()]


def candidates(package: str, root: Path) -> dict[str, str]:
    """{pool name after "<package>__": source path} of every file (or archive member) the rule's patterns find."""
    rule = load_rules().packages[package]
    found = sorted({p for pattern in rule.patterns for p in root.glob(pattern) if p.is_file()})
    if rule.largest_only:
        found = sorted(_largest_sizes(found))
    named: dict[str, str] = {}

    def add(name: str, source: str) -> None:
        if name in named:  # two files would overwrite one another in images/
            raise FetchError(f"{package}: {named[name]} and {source} would both be named {package}__{name}")
        named[name] = source

    for path in found:
        relative = path.relative_to(root).as_posix()
        if rule.archive == "rcc":
            for member in sorted(rcc_files(str(path))):
                if fnmatch.fnmatchcase(member, rule.member):
                    add(Path(member).name, f"{relative}{ARCHIVE_SEPARATOR}{member}")
        elif rule.archive == "edj":
            try:
                member, _ = resource_archives.edj_largest_jpeg(path.read_bytes())
            except resource_archives.ArchiveError:
                member = ""  # vector-only backgrounds hold no JPEG: named anyway, so the skip list covers them
            add(f"{path.stem}.jpg", f"{relative}{ARCHIVE_SEPARATOR}{member}" if member else relative)
        elif rule.largest_only:
            add(f"{path.parts[-4]}{path.suffix}", relative)
        else:
            add(path.name, relative)
    return named


def skip_reason(rule: Rule, name: str) -> str:
    return next((why for pattern, why in rule.skip.items() if fnmatch.fnmatchcase(name, pattern)), "")


def choose(package: str, named: dict[str, str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(sorted source paths of the allow-listed candidates, [(source path, why)] of the others).

    Warns about allow-listed names missing from this version and about candidates no list mentions.
    """
    rule = load_rules().packages[package]
    for missing in sorted(rule.allow - named.keys()):
        warn(f"{package}: allow-listed {missing} is not in this version of the package")
    unreviewed = sorted(n for n in named if n not in rule.allow and not skip_reason(rule, n))
    if unreviewed:
        warn(f"{package}: not reviewed, left out: {', '.join(unreviewed)}")
    left_out = [(source, skip_reason(rule, name) or "not reviewed (not in the allow-list)")
                for name, source in sorted(named.items()) if name not in rule.allow]
    return sorted(source for name, source in named.items() if name in rule.allow), left_out


def output_name(package: str, source_path: str) -> str:
    """``<package>__<name>``: the basename, plasma's folder, an rcc member's basename or an edj archive's stem."""
    path, member = split_source(source_path)
    if path.endswith(".edj"):  # the JPEG inside (vector-only archives hold none, but are named alike)
        return f"{package}__{Path(path).stem}.jpg"
    if member:
        return f"{package}__{Path(member).name}"
    rule = load_rules().packages.get(package)
    if rule and rule.largest_only:
        return f"{package}__{Path(path).parts[-4]}{Path(path).suffix}"
    return f"{package}__{Path(path).name}"

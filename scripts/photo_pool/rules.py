"""The photo pool's rules, scripts/photo_pool_rules.toml, as Python objects: read once, checked on the way in.

The file says which files of each package are photographs (allow-lists, with each photo's tag), why every other
candidate is left out, which photos are held out for validation and which images are benchmarks. A file that
cannot be read, is not TOML, or lacks what the fetch needs raises RulesError naming the file and the key.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photo_pool.errors import FetchError

RULES_FILE = Path(__file__).resolve().parent.parent / "photo_pool_rules.toml"

PRESCALE = 2.0  # area downscale applied before HR patches are cut (prepare_dataset.py): hides JPEG artefacts
MIN_MPIXEL = 0.45  # training photos must keep at least this many Mpixel after the prescale ("~0.5 Mpixel")
TOO_SMALL = f"too small: under {MIN_MPIXEL} Mpixel after the {PRESCALE:g}x prescale"
SIZE_RULE = "too small"  # a skip reason in the rules file that stands for TOO_SMALL

ARCHIVES = ("", "rcc", "edj")
PACKAGE_KEYS = {"patterns", "archive", "member", "largest_only", "copyright_files", "allow", "skip"}


class RulesError(FetchError):
    """The rules file cannot be read or does not hold what the fetch needs; the message names the file."""


@dataclass(frozen=True)
class Rule:
    """Which files of an extracted package are photographs, and why every other candidate is not.

    Names are those the photo gets in the pool after ``<package>__`` (see selection.candidates()): the basename, the
    wallpaper folder for plasma, the archive member's basename for rcc, the archive's stem for edj.
    """

    patterns: tuple[str, ...]  # globs relative to the extracted root: photos, or archives holding them
    allow: frozenset[str]  # kept, chosen by looking at every candidate
    skip: Mapping[str, str] = field(default_factory=dict)  # name glob -> why it is left out
    archive: str = ""  # "rcc": members matching `member`; "edj": the largest JPEG of each archive
    member: str = ""  # glob over rcc member paths
    largest_only: bool = False  # plasma: one picture per folder at many sizes; keep the largest
    copyright_files: str = ""  # DEP-5 "Files:" pattern covering the photos, where they are not named one by one


@dataclass(frozen=True)
class PoolRules:
    """Everything the rules file says."""

    packages: dict[str, Rule]  # in the file's order: the order packages are fetched and listed in
    tag_names: tuple[str, ...]  # what a photo may show, in the order docs/data.md lists them
    tags: dict[str, str]  # "<package>__<name>" -> tag, for every allow-listed photo
    valid_files: frozenset[str]  # the held-out photos (split=valid)
    benchmarks: dict[str, tuple[str, str]]  # label -> (package, path inside the extracted package)


@functools.cache
def load_rules(path: Path = RULES_FILE) -> PoolRules:
    """The rules in ``path``, read on the first call."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RulesError(f"{path}: cannot read the photo pool's rules: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{path}: not valid TOML: {e}") from e
    try:
        return parse_rules(data)
    except ValueError as e:
        raise RulesError(f"{path}: {e}") from e


def parse_rules(data: dict[str, Any]) -> PoolRules:
    """PoolRules from the parsed file; ValueError names the first key that is missing, unknown or mistyped."""
    reject_unknown(data, {"tags", "valid", "benchmarks", "packages"}, "top level")
    tag_names = tuple(strings(data.get("tags"), "tags"))
    packages: dict[str, Rule] = {}
    tags: dict[str, str] = {}
    for package, table in typed(data.get("packages"), dict, "packages").items():
        packages[package], tag_of = parse_package(table, f"packages.{package}", tag_names)
        tags.update({f"{package}__{name}": tag for name, tag in tag_of.items()})
    benchmarks: dict[str, tuple[str, str]] = {}
    for label, value in typed(data.get("benchmarks"), dict, "benchmarks").items():
        pair = strings(value, f"benchmarks.{label}")
        if len(pair) != 2 or pair[0] not in packages:
            raise ValueError(f"benchmarks.{label}: expected [package, path] naming one of [packages], got {value!r}")
        benchmarks[label] = (pair[0], pair[1])
    valid = strings(data.get("valid"), "valid")
    if missing := sorted(set(valid) - tags.keys()):
        raise ValueError(f"valid: not allow-listed: {', '.join(missing)}")
    return PoolRules(packages, tag_names, tags, frozenset(valid), benchmarks)


def parse_package(table: Any, where: str, tag_names: tuple[str, ...]) -> tuple[Rule, dict[str, str]]:
    """One package's Rule, and {name: tag} of its allow-listed photos."""
    table = typed(table, dict, where)
    reject_unknown(table, PACKAGE_KEYS, where)
    tag_of: dict[str, str] = {}
    for tag, names in typed(table.get("allow"), dict, f"{where}.allow").items():
        if tag not in tag_names:
            raise ValueError(f"{where}.allow: {tag!r} is not one of tags ({', '.join(tag_names)})")
        for name in strings(names, f"{where}.allow.{tag}"):
            if name in tag_of:
                raise ValueError(f"{where}.allow: {name} is listed under both {tag_of[name]} and {tag}")
            tag_of[name] = tag
    skip = {pattern: typed(why, str, f"{where}.skip.{pattern}")
            for pattern, why in typed(table.get("skip", {}), dict, f"{where}.skip").items()}
    archive = typed(table.get("archive", ""), str, f"{where}.archive")
    if archive not in ARCHIVES:
        raise ValueError(f"{where}.archive: expected \"rcc\" or \"edj\", got {archive!r}")
    rule = Rule(
        patterns=tuple(strings(table.get("patterns"), f"{where}.patterns")),
        allow=frozenset(tag_of),
        skip={pattern: TOO_SMALL if why == SIZE_RULE else why for pattern, why in skip.items()},
        archive=archive,
        member=typed(table.get("member", ""), str, f"{where}.member"),
        largest_only=typed(table.get("largest_only", False), bool, f"{where}.largest_only"),
        copyright_files=typed(table.get("copyright_files", ""), str, f"{where}.copyright_files"),
    )
    return rule, tag_of


def typed(value: Any, kind: type, where: str) -> Any:
    """``value`` if it is a ``kind``; ValueError naming ``where`` if it is missing or of another type."""
    if value is None:
        raise ValueError(f"{where}: missing")
    if not isinstance(value, kind):
        raise ValueError(f"{where}: expected {KIND_NAMES[kind]}, got {value!r}")
    return value


def strings(value: Any, where: str) -> list[str]:
    """``value`` if it is a list of strings."""
    for item in typed(value, list, where):
        typed(item, str, where)
    return value


def reject_unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    if unknown := sorted(table.keys() - known):
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (expected one of: {', '.join(sorted(known))})")


KIND_NAMES = {dict: "a table", list: "a list", str: "a string", bool: "true or false"}

"""Licence and author of each photo: the package's DEP-5 copyright file, and the per-image credits some packages
ship beside their pictures (plasma's metadata.json, palapeli's desktop files, the LXQt wallpapers' License file,
GCompris' resource READMEs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from photo_pool.selection import rcc_files, split_source

# Short SPDX identifiers for the licence names Debian copyright files use.
SPDX = {
    "GPL-2+": "GPL-2.0-or-later", "GPL-2.0+": "GPL-2.0-or-later", "GPL-3+": "GPL-3.0-or-later",
    "LGPL-2+": "LGPL-2.0-or-later", "LGPL-2.1+": "LGPL-2.1-or-later", "Expat": "MIT",
    "BSD-3-clause": "BSD-3-Clause", "BSD-2-clause": "BSD-2-Clause", "CC0": "CC0-1.0",
    "BSD-3-clause-Google": "BSD-3-Clause",
}


def parse_dep5(text: str) -> list[dict[str, str]]:
    """Paragraphs of a machine-readable (DEP-5) copyright file as {field: value}; continuation lines joined."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    name = None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, name = {}, None
        elif line[0] in " \t" and name:
            current[name] += "\n" + line.strip()
        elif ":" in line and not line.startswith("#"):
            name, value = line.split(":", 1)
            current[name] = value.strip()
    return paragraphs


def copyright_stanza(text: str, source_path: str, files_pattern: str = "") -> tuple[dict[str, str], bool]:
    """The DEP-5 stanza covering one installed file, and whether it covers the file specifically (not ``*``).

    DEP-5 ``Files:`` patterns name paths in the *source* tree, which do not map onto installed paths in general.
    So: the stanza whose patterns include ``files_pattern`` (given per package where needed) wins, else a stanza
    naming the file explicitly (no wildcard, same basename), else the ``Files: *`` stanza.
    """
    paragraphs = [p for p in parse_dep5(text) if "Files" in p]
    if not paragraphs:
        return {}, False
    basename = Path(split_source(source_path)[0]).name
    chosen = None
    for paragraph in paragraphs:  # the last match wins, as in DEP-5
        patterns = paragraph["Files"].split()
        if files_pattern in patterns or any(not any(c in p for c in "*?[") and Path(p).name == basename
                                            for p in patterns):
            chosen = paragraph
    if chosen is not None:
        return chosen, True
    return next((p for p in paragraphs if "*" in p["Files"].split()), paragraphs[0]), False


def licence_from_copyright(text: str, source_path: str, files_pattern: str = "") -> tuple[str, str]:
    """(SPDX-like licence, copyright holder) for one installed file, from its package's copyright file."""
    stanza, _ = copyright_stanza(text, source_path, files_pattern)
    if not stanza:
        return "unknown (not a DEP-5 copyright file)", ""
    licence = stanza.get("License", "").splitlines()[0] if stanza.get("License") else "unknown"
    licence = " AND ".join(SPDX.get(part, part) for part in licence.split(" AND "))
    holder = stanza.get("Copyright", "").splitlines()[0] if stanza.get("Copyright") else ""
    return licence, holder


def _plasma_note(meta: Path) -> tuple[str, str]:
    plugin = json.loads(meta.read_text(encoding="utf-8")).get("KPlugin", {})
    authors = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
    return f"metadata.json: {plugin.get('License', '?')}, {authors}", authors


def _palapeli_note(desktop: Path) -> tuple[str, str]:
    fields = dict(line.split("=", 1) for line in desktop.read_text(encoding="utf-8").splitlines()
                  if line.startswith("X-KDE-PluginInfo-") and "=" in line)
    author = fields.get("X-KDE-PluginInfo-Author", "")
    return (f"desktop file: {fields.get('X-KDE-PluginInfo-License', '?')}, {author or '?'}, "
            f"{fields.get('X-KDE-PluginInfo-Website', '')}"), author


def parse_readme_credits(text: str) -> dict[str, dict[str, str]]:
    """GCompris' resource READMEs: blocks of "Copyright/Source/License/Comments/Files:" lines -> {file: block}."""
    credits: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        files: list[str] = []
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep and key in ("Copyright", "Source", "License", "Comments", "Files"):
                fields[key] = value.strip()
                files += value.split() if key == "Files" else []
            elif "Files" in fields:  # file names listed one per line below "Files:"
                files += line.split()
        credits.update({name: fields for name in files})
    return credits


def lxqt_credit(text: str, stem: str) -> str:
    """Who the wallpapers' License file credits for ``stem``: "author" lines, each followed by a line of names."""
    lines = [line.strip() for line in text.split("Credits:", 1)[-1].splitlines() if line.strip()]
    for author, names in zip(lines[::2], lines[1::2]):
        for name in (n.strip() for n in names.strip(";").split(",")):
            # The list abbreviates: "not-windows" for this-is-not-windows, "appleflowers" for appleflower.
            if name and (name == stem or stem.endswith("-" + name) or name == stem + "s"):
                return author.split(" (")[0]
    return ""


def upstream_note(package: str, root: Path, source_path: str) -> tuple[str, str]:
    """(note, author) from per-image credits some packages ship beside the picture (more precise than the
    copyright file); ("", "") where there are none."""
    path, member = split_source(source_path)
    file = root / path
    if package == "plasma-workspace-wallpapers" and (file.parents[2] / "metadata.json").is_file():
        return _plasma_note(file.parents[2] / "metadata.json")
    if package == "palapeli-data" and file.with_suffix(".desktop").is_file():
        return _palapeli_note(file.with_suffix(".desktop"))
    if package == "lxqt-themes" and (file.parent / "License").is_file():
        text = (file.parent / "License").read_text(encoding="utf-8")
        author = lxqt_credit(text, file.stem)
        return f"wallpapers/License: CC-BY-SA-3.0 (LXQt Project Team){f', {author}' if author else ''}", author
    if package == "gcompris-qt-data" and member:
        readme = rcc_files(str(file)).get(str(Path(member).parent / "README"), b"").decode("utf-8")
        block = parse_readme_credits(readme).get(Path(member).name)
        if block:
            comments = f" ({block['Comments']})" if block.get("Comments") else ""
            return (f"README: {block.get('License', '?')}, {block.get('Copyright', '?')}, {block.get('Source', '')}"
                    f"{comments}"), block.get("Copyright", "")
    return "", ""

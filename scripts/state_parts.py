"""Split a file (a resume checkpoint) into parts small enough for a transfer with a per-file size limit, and join them.

    python scripts/state_parts.py split runs/release_x4/checkpoints/last.pth OUT_DIR [--max-mib 15]
    python scripts/state_parts.py join OUT_DIR/last.pth.parts.json [--output runs/release_x4/checkpoints/last.pth]
    python scripts/state_parts.py verify OUT_DIR/last.pth.parts.json

``split`` writes ``NAME.part00``, ``NAME.part01``, ... and ``NAME.parts.json`` (the file's size and sha256 and each
part's). ``join`` checks every part against the manifest, concatenates them, checks the whole file's sha256 and
only then renames it into place (a bad or missing part leaves no file behind). Without ``--output`` it writes
``NAME`` beside the manifest. Parts are 15 MiB by default (``--max-mib``), under a common 16 MiB attachment limit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import BinaryIO

from srdensenet.fileio import OutputError, atomic_write, write_bytes_atomic, write_text_atomic

CHUNK = 1 << 20


class PartsError(ValueError):
    """A manifest or part that does not match (reported without a traceback)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def split(path: Path, out_dir: Path, max_mib: float = 15.0) -> Path:
    """Write the parts and the manifest; returns the manifest's path."""
    limit = int(max_mib * 2**20)
    if limit < 1:
        raise PartsError("--max-mib must be positive")
    out_dir.mkdir(parents=True, exist_ok=True)
    parts, whole = [], hashlib.sha256()
    with open(path, "rb") as source:
        for index in range(10**4):
            data = source.read(limit)
            if not data and index:
                break
            whole.update(data)
            name = f"{path.name}.part{index:02d}"
            write_bytes_atomic(out_dir / name, data)
            parts.append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = out_dir / f"{path.name}.parts.json"
    write_text_atomic(manifest, json.dumps({"file": path.name, "size": path.stat().st_size,
                                            "sha256": whole.hexdigest(), "parts": parts}, indent=1) + "\n")
    return manifest


def _read_manifest(manifest: Path) -> dict:
    try:
        info = json.loads(manifest.read_text())
        return {"file": info["file"], "size": int(info["size"]), "sha256": info["sha256"], "parts": info["parts"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PartsError(f"{manifest}: not a parts manifest ({error})") from None


def verify(manifest: Path) -> dict:
    """Check every part's size and sha256; returns the manifest."""
    info = _read_manifest(manifest)
    for part in info["parts"]:
        path = manifest.parent / part["name"]
        if not path.is_file():
            raise PartsError(f"{path}: missing (the manifest lists {len(info['parts'])} parts)")
        if path.stat().st_size != part["size"] or sha256_of(path) != part["sha256"]:
            raise PartsError(f"{path}: does not match its sha256 / size in {manifest.name} (damaged in transfer?)")
    if sum(part["size"] for part in info["parts"]) != info["size"]:
        raise PartsError(f"{manifest}: the parts do not add up to the file's {info['size']} bytes")
    return info


def join(manifest: Path, output: Path | None = None) -> Path:
    """Join verified parts into output (atomically, after checking the whole file's sha256)."""
    info = verify(manifest)
    output = output or manifest.parent / info["file"]

    def write(handle: BinaryIO) -> None:
        whole = hashlib.sha256()
        for part in info["parts"]:
            data = (manifest.parent / part["name"]).read_bytes()
            whole.update(data)
            handle.write(data)
        if whole.hexdigest() != info["sha256"]:
            raise PartsError(f"{manifest}: the joined file's sha256 differs from the manifest's")

    atomic_write(output, write)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    split_parser = commands.add_parser("split", help="FILE OUT_DIR: write parts and a manifest")
    split_parser.add_argument("file", type=Path)
    split_parser.add_argument("out_dir", type=Path)
    split_parser.add_argument("--max-mib", type=float, default=15.0)
    join_parser = commands.add_parser("join", help="MANIFEST: verify the parts and join them")
    join_parser.add_argument("manifest", type=Path)
    join_parser.add_argument("--output", type=Path)
    verify_parser = commands.add_parser("verify", help="MANIFEST: verify the parts only")
    verify_parser.add_argument("manifest", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            manifest = split(args.file, args.out_dir, args.max_mib)
            info = _read_manifest(manifest)
            print(f"{args.file} ({info['size']:,} bytes, sha256 {info['sha256']}) -> {len(info['parts'])} parts "
                  f"+ {manifest}")
        elif args.command == "join":
            output = join(args.manifest, args.output)
            print(f"joined {args.manifest} -> {output} (sha256 verified)")
        else:
            info = verify(args.manifest)
            print(f"{args.manifest}: {len(info['parts'])} parts verified ({info['size']:,} bytes)")
    except (PartsError, OutputError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

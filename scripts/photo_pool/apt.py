"""apt-get and dpkg: a package's .deb downloaded (no root needed), its version read, its files extracted."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from photo_pool.errors import FetchError, warn
from srdensenet.fileio import atomic_write


class AptListsMissing(FetchError):
    """No package can be fetched: stop at once instead of failing every package the same way."""


def run(command: list[str], package: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise FetchError(f"{package}: {command[0]} not found; this script needs a Debian/Ubuntu system") from e
    if done.returncode != 0:
        tail = "\n  ".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise FetchError(f"{package}: `{' '.join(command)}` failed (exit {done.returncode}):\n  {tail}")
    return done


def ensure_apt_lists() -> None:
    """apt-get download needs package lists; a fresh container has none."""
    lists = Path("/var/lib/apt/lists")
    if any(lists.glob("*_Packages*")):
        return
    if os.geteuid() == 0:
        print("apt package lists are missing: running apt-get update", flush=True)
        run(["apt-get", "update"], "apt-get update")
        return
    raise AptListsMissing("apt package lists are missing: run `sudo apt-get update` once, then re-run this script")


def download_deb(package: str, debs: Path) -> Path:
    """The package's .deb in ``debs``, downloaded unless already there."""
    existing = sorted(debs.glob(f"{package}_*.deb"))
    if existing:
        if len(existing) > 1:
            warn(f"{package}: several .debs in {debs}, using {existing[-1].name}")
        return existing[-1]
    # Download into a private folder and move the file in afterwards: an interrupted download never
    # leaves a truncated .deb that a re-run would take for a finished one.
    with tempfile.TemporaryDirectory(dir=debs, prefix=".partial-") as tmp:
        try:
            run(["apt-get", "download", package], package, cwd=Path(tmp))
        except FetchError as e:
            if "Unable to locate package" in str(e) or "has no installation candidate" in str(e):
                raise FetchError(f"{e}\n  hint: run `sudo apt-get update`; the package is in Debian bookworm "
                                 "(main), other releases may lack it") from e
            raise
        got = list(Path(tmp).glob(f"{package}_*.deb"))
        if len(got) != 1:
            raise FetchError(f"{package}: apt-get download produced {len(got)} .deb files")
        with got[0].open("rb") as deb:
            atomic_write(debs / got[0].name, lambda handle: shutil.copyfileobj(deb, handle))
        return debs / got[0].name


def deb_version(deb: Path, package: str) -> str:
    """The Version field of a .deb."""
    return run(["dpkg-deb", "-f", str(deb), "Version"], package).stdout.strip()


def extract_deb(deb: Path, root: Path, package: str) -> None:
    """The files a .deb installs, under ``root`` (``dpkg -x``: no root needed, nothing installed)."""
    run(["dpkg", "-x", str(deb), str(root)], package)

"""What produced a result: the code version and the library versions, recorded in run folders and results JSON."""

from __future__ import annotations

import platform
import re
import subprocess
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent  # the clone, when the package runs from one


def git_commit() -> str:
    """HEAD of this repository, '+dirty' when tracked files are modified; 'unknown' outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD^{commit}"], capture_output=True,
                              text=True, timeout=10, cwd=ROOT)
        # Only a commit hash counts: a checkout without commits or a copy without .git once recorded "HEAD".
        if head.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", head.stdout.strip()):
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=ROOT)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    import cv2
    import skimage

    return {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": np.__version__,
            "opencv": cv2.__version__, "skimage": skimage.__version__}

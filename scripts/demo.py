"""The README's main job (`make demo`), on the embedded data only (no downloads):

1. prepare the demo data from scikit-image's bundled photos (prepare_dataset.py --preset demo);
2. train the `demo` preset (a small SRDenseNet_All, x2) on CPU for a few minutes (resumes if interrupted);
3. validate it against bicubic on the held-out demo photos;
4. evaluate the shipped x4 weights on Set5 butterfly and the demo photos, and draw the README's figure from them.

Everything it writes goes under runs/demo/ and data/demo/ (both git-ignored): a demo run leaves the repository's
tracked files as they were. Refreshing the tracked figure in assets/ is a separate command, `make figure`.

Each step runs the repository's own command-line tools, exactly as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from srdensenet.fileio import exit_quietly_on_broken_pipe

ROOT = Path(__file__).resolve().parent.parent

RUN = ROOT / "runs" / "demo"
RELEASED = ROOT / "weights" / "srdensenet_x4_all_paper.safetensors"


def step(title: str, *args: str) -> None:
    print(f"\n=== {title}\n$ python {' '.join(args)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=ROOT)
    if result.returncode:
        sys.exit(f"demo: step failed ({title}), exit code {result.returncode}")
    print(f"--- {title}: {time.perf_counter() - started:.0f} s", flush=True)


def main() -> None:
    step("1/4 prepare the embedded demo data", "prepare_dataset.py", "--preset", "demo")
    step("2/4 train the demo preset on CPU", "train.py", "--preset", "demo", "--resume", "auto")
    # --force: these scores are recomputed from the run's checkpoint on every demo, so the old ones may go.
    step("3/4 demo model against bicubic", "validate.py", "--preset", "demo", "--weights",
         str(RUN / "checkpoints" / "best.pth"), "--json", str(RUN / "valid.json"), "--force")
    step("4/4 shipped x4 weights, and the README figure", "validate.py", "--weights", str(RELEASED),
         "--valid-dirs", "srdensenet/golden", "data/demo/valid", "--json", str(RUN / "released_x4.json"), "--force")
    step("figure", "scripts/make_figure.py", "--output", str(RUN / "figure_x4.png"), "--curve", str(RUN / "curve.png"))

    scores = json.loads((RUN / "valid.json").read_text())["datasets"]
    print("\nDemo model (x2) on the held-out embedded photos:")
    for name, s in scores.items():
        verdict = "beats" if s["psnr"] > s["bicubic_psnr"] else "does NOT beat"
        print(f"  {name}: {s['psnr']:.3f} dB vs bicubic {s['bicubic_psnr']:.3f} dB ({verdict} bicubic)")
    print(f"\nresults:     {RUN / 'valid.json'}, {RUN / 'released_x4.json'}")
    print(f"checkpoints: {RUN / 'checkpoints'}")
    print(f"TensorBoard: tensorboard --logdir {RUN / 'tb'}")
    print(f"figure:      {RUN / 'figure_x4.png'} (the README's, from this machine; `make figure` refreshes assets/)")


if __name__ == "__main__":
    exit_quietly_on_broken_pipe(main)

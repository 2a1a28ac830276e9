"""The README's main job (`make demo`), on the embedded data only (no downloads):

1. prepare the demo data from scikit-image's bundled photos (prepare_dataset.py --preset demo);
2. train the `demo` preset (a small SRDenseNet_All, x2) on CPU for a few minutes (resumes if interrupted);
3. validate it against bicubic on the held-out demo photos;
4. evaluate the shipped x4 weights on Set5 butterfly and the demo photos, and draw the README's figure from them.

Everything it writes goes under runs/demo/ and data/demo/ (both git-ignored): a demo run leaves the repository's
tracked files as they were. Refreshing the tracked figure in assets/ is a separate command, `make figure`.

Each step runs the repository's own command-line tools, exactly as a user would. Ctrl-C (or SIGTERM) pauses it: the
step under way stops cleanly (training saves its checkpoint first), and `make demo` again continues from there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from srdensenet.fileio import exit_quietly_on_broken_pipe

ROOT = Path(__file__).resolve().parent.parent

RUN = ROOT / "runs" / "demo"
RELEASED = ROOT / "weights" / "srdensenet_x4_all_paper.safetensors"
# (title, the command's arguments after `python`), run in this order.
STEPS = (
    ("1/4 prepare the embedded demo data", ("prepare_dataset.py", "--preset", "demo")),
    ("2/4 train the demo preset on CPU", ("train.py", "--preset", "demo", "--resume", "auto")),
    # --force: these scores are recomputed from the run's checkpoint on every demo, so the old ones may go.
    ("3/4 demo model against bicubic", ("validate.py", "--preset", "demo", "--weights",
                                        str(RUN / "checkpoints" / "best.pth"), "--json", str(RUN / "valid.json"),
                                        "--force")),
    ("4/4 shipped x4 weights, and the README figure", ("validate.py", "--weights", str(RELEASED), "--valid-dirs",
                                                      "srdensenet/golden", "data/demo/valid", "--json",
                                                      str(RUN / "released_x4.json"), "--force")),
    ("figure", ("scripts/make_figure.py", "--output", str(RUN / "figure_x4.png"), "--curve", str(RUN / "curve.png"))),
)


class Pause:
    """SIGINT / SIGTERM while the demo runs: passed on to the step under way (which then stops cleanly; training
    saves its checkpoint first), and the demo stops after it. Each step runs in its own process group, so a Ctrl-C
    at the terminal reaches it once, from here, rather than twice."""

    def __init__(self) -> None:
        self.signal, self.child = 0, None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.signal = signum
        if self.child is not None:
            try:
                os.kill(self.child.pid, signum)  # not reaped before wait() returns, so the PID is still the step's
            except ProcessLookupError:
                pass


def python_command() -> str:
    """How the user runs this environment's Python: .venv/bin/python from the clone (`make`'s), else python."""
    executable = Path(sys.executable)
    return str(executable.relative_to(ROOT)) if executable.is_relative_to(ROOT) else "python"


def paused(pause: Pause, done: list[str], title: str) -> str:
    """The one line a paused demo ends with: what is finished, and how to go on."""
    finished = ", ".join(t.split(" ", 1)[0] for t in done) or "nothing yet"
    return (f"demo: paused by {signal.Signals(pause.signal).name} during step {title!r} (finished: {finished}); "
            f"`make demo` (or {python_command()} scripts/demo.py) continues from there")


def run_steps(pause: Pause) -> None:
    """Every step in order; a failure or a pause ends the demo (exit code: the step's, or 128 + the signal)."""
    done: list[str] = []
    for title, args in STEPS:
        if pause.signal:  # arrived between two steps
            print(paused(pause, done, title), flush=True)
            sys.exit(128 + pause.signal)
        print(f"\n=== {title}\n$ python {' '.join(args)}", flush=True)
        started = time.perf_counter()
        pause.child = subprocess.Popen([sys.executable, *args], cwd=ROOT, process_group=0)
        code = pause.child.wait()
        pause.child = None
        if code == 0:
            done.append(title)
        if pause.signal:
            print(paused(pause, done, title), flush=True)
            sys.exit(128 + pause.signal)
        if code:
            sys.exit(f"demo: step failed ({title}), exit code {code}")
        print(f"--- {title}: {time.perf_counter() - started:.0f} s", flush=True)


def report() -> None:
    """The demo's results, where its files are, and how to run the commands yourself."""
    scores = json.loads((RUN / "valid.json").read_text())["datasets"]
    print("\nDemo model (x2) on the held-out embedded photos:")
    for name, s in scores.items():
        verdict = "beats" if s["psnr"] > s["bicubic_psnr"] else "does NOT beat"
        print(f"  {name}: {s['psnr']:.3f} dB vs bicubic {s['bicubic_psnr']:.3f} dB ({verdict} bicubic)")
    print(f"\nresults:     {RUN / 'valid.json'}, {RUN / 'released_x4.json'}")
    print(f"checkpoints: {RUN / 'checkpoints'}")
    print(f"TensorBoard: tensorboard --logdir {RUN / 'tb'}")
    print(f"figure:      {RUN / 'figure_x4.png'} (the README's, from this machine; `make figure` refreshes assets/)")
    python = python_command()
    best = shown(RUN / "checkpoints" / "best.pth")
    where = f" ({python}, or python after `source .venv/bin/activate`)" if python != "python" else ""
    print(f"\nNext, run the commands yourself from {ROOT} with this environment's Python{where}:")
    commands = {"inference.py -i photo.jpg -o out/": "upscale a photo x4 (the shipped weights)",
                f"inference.py --weights {best} -i photo.jpg -o out/": "x2, with the demo model",
                f"validate.py --weights {best} --valid-dirs data/demo/valid": "score the demo model",
                "train.py --preset demo --run-name mine": "a run of your own (docs/training.md)"}
    for command, what in commands.items():
        print(f"  # {what}\n  {python} {command}")


def shown(path: Path) -> str:
    """A path as the commands above take it: relative to the clone, where they run."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    run_steps(Pause())
    report()


if __name__ == "__main__":
    exit_quietly_on_broken_pipe(main)

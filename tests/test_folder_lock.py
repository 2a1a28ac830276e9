"""folder_lock: one owner per output, between real processes; the commands that write folders or exports refuse a
held one with exit code 2 and one line naming the holder."""

import fcntl
import os
import signal
import subprocess
import sys

import pytest
import skimage.data

from srdensenet import folder_lock
from srdensenet.cli import prepare_data as prepare_dataset
from srdensenet.cli import validate
from srdensenet.fileio import WriteError, hold_output
from srdensenet.folder_lock import FolderBusyError, hold, lock_path
from srdensenet.image_files import write_image

RELEASE = "weights/srdensenet_x4_all_paper.safetensors"


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    write_image(root / "coffee.png", skimage.data.coffee()[:64, :64])
    return root


@pytest.fixture
def holder(repo_root):
    """Start a process that holds an output until killed; yields a function (path -> the process)."""
    started = []

    def start(path):
        code = ("import sys, time; from srdensenet.folder_lock import hold\n"
                f"with hold({str(path)!r}):\n    print('held', flush=True); time.sleep(120)")
        process = subprocess.Popen([sys.executable, "-c", code], cwd=repo_root, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_held_output_is_refused_naming_the_holder_until_it_is_killed(tmp_path, holder):
    out = tmp_path / "run"
    process = holder(out)
    with pytest.raises(FolderBusyError) as refused, hold(out, ", or choose another --run-name"):
        pass
    message = str(refused.value)
    assert f"{out} is in use by PID {process.pid} on " in message and "(python -c;" in message
    assert message.endswith(f"(kill {process.pid}), or choose another --run-name") and "\n" not in message
    # Deleting and re-making the output by hand does not free it: the lock file is beside it.
    out.mkdir()
    out.rmdir()
    with pytest.raises(FolderBusyError), hold(out):
        pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    with hold(out) as lock:  # the kernel released the lock of the killed process; its lock file is taken over
        assert lock == lock_path(out) == tmp_path / ".run.lock"
        assert f'"pid": {os.getpid()}' in lock.read_text()
    assert not lock.exists()  # removed on release


def test_lock_file_replaced_while_locking_is_locked_again(tmp_path, monkeypatch):
    """A holder that releases (and removes the lock file) just after we opened it: we lock the new file instead."""
    out = tmp_path / "run"
    lock = lock_path(out)
    real_flock, calls = fcntl.flock, []

    def flock_after_a_release(fd, operation):
        if not calls:  # the file we opened is removed and another made in its place
            lock.unlink()
            lock.write_text("")
        calls.append(os.fstat(fd).st_ino)
        return real_flock(fd, operation)

    monkeypatch.setattr(folder_lock.fcntl, "flock", flock_after_a_release)
    with hold(out):
        assert len(calls) == 2 and calls[1] == os.stat(lock).st_ino
        monkeypatch.setattr(folder_lock.fcntl, "flock", real_flock)
        with pytest.raises(FolderBusyError), hold(out):  # held: the file at the path is the one we locked
            pass


def test_lock_file_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(WriteError, match=r"^--output .*/file/\.x\.lock: cannot write \(.+\); nothing was written$"), \
            hold_output(tmp_path / "file" / "x", "--output"):
        pass


def test_prepare_dataset_and_validate_report_refuse_a_held_output(tmp_path, holder, photos, capsys):
    out = tmp_path / "sub"
    process = holder(out)
    code = prepare_dataset.main(["subimages", "--input", str(photos), "--output", str(out), "--size", "32",
                                 "--step", "32", "--workers", "1"])
    assert code == 2 and not out.exists()
    assert f"PID {process.pid}" in capsys.readouterr().err
    report = tmp_path / "page"
    process = holder(report)
    code = validate.main(["--weights", "bicubic", "--valid-dirs", str(photos), "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 2 and f"{report} is in use by PID {process.pid}" in err and len(err.strip().splitlines()) == 1
    assert not report.exists()


@pytest.mark.parametrize("script, output_option", [("scripts/export_weights.py", "--checkpoint"),
                                                   ("scripts/export_hub.py", "--weights")])
def test_exports_refuse_a_held_output(repo_root, tmp_path, holder, script, output_option):
    out = tmp_path / "export"
    process = holder(out)
    result = subprocess.run([sys.executable, script, output_option, RELEASE, "--output", str(out)], cwd=repo_root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"PID {process.pid}" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()

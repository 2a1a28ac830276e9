"""Hostile and damaged weights files (docs/errors.md, "Bad inputs"), made at run time from tiny models: each is
refused with one line naming the file and what is wrong, before any model is built; nothing is resumed from garbage
and nothing in a pickle runs."""

import json
import os
import pickle
import shlex
import struct
import subprocess
import sys
import zipfile

import pytest
import torch
from helpers import run_train
from safetensors import safe_open
from safetensors.torch import save_file
from skimage import data as skdata

from srdensenet.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from srdensenet.config import Config
from srdensenet.image_files import write_image
from srdensenet.limits import MAX_JSON_BYTES
from srdensenet.released import default_weights, hub_model
from srdensenet.run_folder import RunFolderError, check_new_run, make_plan
from srdensenet.train_step import make_adam
from srdensenet.weights_checks import CONTENTS_KEY, contents_digest

ONE_GIB_KIB = 2**20  # ru_maxrss is in KiB on Linux


def flip_tensor_bytes(path, count=1000):
    """Invert ``count`` bytes inside the largest tensor record of a torch zip archive (torch checks none of them)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    for index in range(start, start + min(count, info.file_size)):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def resaved(path, change):
    """A .pth as an attacker would make it: loaded, changed, its SHA-256 recomputed, saved again."""
    raw = torch.load(path, weights_only=True)
    change(raw)
    raw[CONTENTS_KEY] = contents_digest(raw)
    torch.save(raw, path)
    return path


def refusal(path) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message and message.startswith(str(path))
    return message[len(str(path)):]


@pytest.fixture
def checkpoint(tmp_path, tiny):
    """A training checkpoint of the tiny model with everything a resume holds."""
    path = tmp_path / "w.pth"
    optimizer = make_adam(tiny, 1e-3)
    tiny(torch.rand(1, 1, 6, 6)).mean().backward()
    optimizer.step()
    save_checkpoint(path, tiny, ema_model=tiny, optimizer=optimizer.state_dict(), rng=capture_rng_state(), step=3,
                    epoch=1)
    return path


def test_flipped_bytes_in_a_tensor_are_refused(checkpoint):
    torch.load(checkpoint, weights_only=True)  # torch itself reads the damaged file without a word
    flip_tensor_bytes(checkpoint)
    assert torch.load(checkpoint, weights_only=True)
    assert refusal(checkpoint) == ": damaged: its contents do not match the SHA-256 recorded when it was saved"
    with pytest.raises(CheckpointError, match="damaged"):
        model_from_checkpoint(checkpoint)


def test_files_without_a_sha256_load_with_one_note(tmp_path, tiny, checkpoint, capfd):
    raw = torch.load(checkpoint, weights_only=True)
    del raw[CONTENTS_KEY]  # a checkpoint written before they carried one
    torch.save(raw, tmp_path / "old.pth")
    weights = tmp_path / "w.safetensors"
    save_checkpoint(weights, tiny)
    with safe_open(str(weights), framework="pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != "weights_sha256"}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(tensors, str(tmp_path / "nosha.safetensors"), metadata=metadata)
    capfd.readouterr()
    for path in (tmp_path / "old.pth", tmp_path / "nosha.safetensors"):
        model_from_checkpoint(path)
        load_checkpoint(path)  # said once per file
    notes = capfd.readouterr().err.splitlines()
    assert notes == [f"note: {tmp_path / 'old.pth'}: saved without a SHA-256 of its contents (written before "
                     f"checkpoints carried one), so it could not be checked for damage",
                     f"note: {tmp_path / 'nosha.safetensors'}: holds no SHA-256 of its tensors (weights_sha256 in its "
                     f"header), so it could not be checked for damage"]
    load_checkpoint(checkpoint)
    load_checkpoint(default_weights())  # the shipped weights carry their SHA-256: no note
    assert capfd.readouterr().err == ""


BAD_FIELDS = [
    ("growth_rate", 0, "'growth_rate' must be an integer from 1 to 256, got 0"),
    ("num_blocks", -3, "'num_blocks' must be an integer from 1 to 64, got -3"),
    ("bottleneck_features", 10**6, "'bottleneck_features' must be an integer from 1 to 2048, got 1000000"),
    ("num_blocks", 10**6, "'num_blocks' must be an integer from 1 to 64, got 1000000"),
    ("num_features", 1e6, "'num_features' must be an integer from 1 to 1024, got 1000000.0 (a float)"),
    ("layers_per_block", True, "'layers_per_block' must be an integer from 1 to 64, got True (a boolean)"),
    ("growth_rate", "x", "'growth_rate' must be an integer from 1 to 256, got 'x' (a string)"),
    ("variant", "x", "'variant' must be 'h', 'hl' or 'all', got 'x' (a string)"),
    ("dropout", 0.5, "'dropout' is unknown (the fields: upscale_factor, variant, layout, num_blocks, "
                     "layers_per_block, growth_rate, num_features, bottleneck_features)"),
]


@pytest.mark.parametrize("field, value, message", BAD_FIELDS, ids=lambda v: repr(v)[:12])
def test_bad_arch_fields_are_refused_before_anything_is_built(tmp_path, tiny, checkpoint, field, value, message):
    resaved(checkpoint, lambda raw: raw["arch"].update({field: value}))
    assert refusal(checkpoint) == f": arch field {message}"
    hub = tmp_path / "hub"
    hub.mkdir()
    save_checkpoint(hub / "model.safetensors", tiny)
    (hub / "config.json").write_text(json.dumps({**tiny.arch, field: value}))
    with pytest.raises(CheckpointError) as caught:
        model_from_checkpoint(hub)
    assert str(caught.value) == f"{hub / 'config.json'}: arch field {message}"


def test_sizes_within_bounds_that_multiply_into_a_huge_model_are_refused(checkpoint):
    resaved(checkpoint, lambda raw: raw["arch"].update(num_blocks=64, layers_per_block=64, growth_rate=16))
    assert refusal(checkpoint) == (": arch sizes make a model of 595,206,953 parameters, above the limit of "
                                   "100,000,000 (the paper's x4 model has 2,659,585)")
    with pytest.raises(ValueError, match="arch field 'num_blocks' must be an integer from 1 to 64"):
        hub_model(4, num_blocks=10**6)  # torch.hub arguments: refused before a layer is allocated


def test_deep_and_huge_json_is_refused_before_it_is_parsed(tmp_path, tiny):
    hub = tmp_path / "hub"
    hub.mkdir()
    save_checkpoint(hub / "model.safetensors", tiny)
    (hub / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=r"^\S+config\.json: JSON nested more than 32 levels deep$"):
        load_checkpoint(hub)
    (hub / "config.json").write_text(json.dumps({"x": "y" * MAX_JSON_BYTES}))
    with pytest.raises(CheckpointError, match=r"config\.json: 1,048,585 bytes, more than the 1,048,576 allowed$"):
        load_checkpoint(hub)
    weights = tmp_path / "w.safetensors"
    with safe_open(str(hub / "model.safetensors"), framework="pt") as handle:
        metadata = {**handle.metadata(), "config": "{" * 50_000 + "}" * 50_000}
        save_file({name: handle.get_tensor(name) for name in handle.keys()}, str(weights), metadata=metadata)
    assert refusal(weights) == ": metadata 'config': JSON nested more than 32 levels deep"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("[" * 100_000 + "]" * 100_000)  # a run's own JSON: unreadable, not a crash
    with pytest.raises(RunFolderError, match="holds a config.json that cannot be read"):
        check_new_run(run, make_plan(Config(), "fp32"))


def test_deep_nesting_in_a_pth_is_refused(checkpoint):
    raw = torch.load(checkpoint, weights_only=True)
    nested: list = []
    for _ in range(200):
        nested = [nested]
    raw.update(config={"a": nested})
    del raw[CONTENTS_KEY]
    torch.save(raw, checkpoint)
    assert refusal(checkpoint) == ": its 'config' entry is nested more than 64 levels deep"


class RunsCode:
    """Pickles as a call of ``function(*args)``: what a hostile checkpoint asks the loader to do."""

    def __init__(self, function, *args):
        self.call = (function, args)

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("name, make", [
    ("posix.system (os.system)", lambda marker: RunsCode(os.system, f"touch {marker}")),
    ("builtins.eval", lambda marker: RunsCode(eval, f"open({str(marker)!r}, 'w')")),
    ("subprocess.Popen", lambda marker: RunsCode(subprocess.Popen, ["touch", str(marker)])),
], ids=["os.system", "eval", "Popen"])
def test_code_in_a_pickle_is_refused_by_name_and_never_run(tmp_path, tiny, name, make):
    marker = tmp_path / "ran"
    path = tmp_path / "w.pth"
    torch.save({"format": "srdensenet-checkpoint", "arch": tiny.arch, "model": make(marker)}, path)
    message = refusal(path)
    assert message == (f": refused: loading it would run code (it asks for the global {name}); nothing in it was "
                       f"executed")
    assert "weights_only" not in message and not marker.exists()


def test_code_in_a_newer_pickle_protocol_is_named_too(tmp_path):
    """Protocol 4+ asks for globals with STACK_GLOBAL, which torch's loader refuses as an unknown operand."""
    path = tmp_path / "w.pth"
    torch.save({"weights": torch.zeros(2)}, path)
    with zipfile.ZipFile(path) as archive:
        records = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, content in records:
            if info.filename.endswith("data.pkl"):
                content = pickle.dumps({"x": RunsCode(os.system, "true")}, protocol=5)
            archive.writestr(info, content)
    assert refusal(path) == (": refused: loading it would run code (it asks for the global posix.system (os.system)); "
                             "nothing in it was executed")


@pytest.mark.parametrize("dtype", [torch.bool, torch.int8, torch.complex64])
def test_weights_that_are_not_floating_point_are_refused(checkpoint, dtype):
    resaved(checkpoint, lambda raw: raw["model"].update({"low_level.weight": raw["model"]["low_level.weight"]
                                                         .to(dtype)}))
    assert refusal(checkpoint) == (f": tensor low_level.weight (model) is {str(dtype)[6:]}; weights must be "
                                   f"float16, bfloat16, float32 or float64")


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw.update(format_version="1"), ": unreadable format_version '1'"),
    (lambda raw: raw["model"].update({7: torch.zeros(1)}), ": its 'model' entry has the key 7, not a tensor name"),
    (lambda raw: raw.update(ema="weights"), ": its 'ema' entry is not a dict of tensors"),
    (lambda raw: raw["model"].update({"low_level.weight": [1.0]}), ": model entry 'low_level.weight' is a list, "
                                                                   "not a tensor"),
], ids=["version", "key", "ema", "list"])
def test_odd_entries_are_refused(checkpoint, change, message):
    resaved(checkpoint, change)
    assert refusal(checkpoint) == message


@pytest.mark.parametrize("entry, suffix", [("model", ".pth"), ("ema", ".pth"), ("model", ".safetensors")])
def test_non_finite_weights_are_refused_naming_the_file_and_tensor(tmp_path, tiny, entry, suffix):
    broken = type(tiny)(**tiny.arch)
    broken.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        broken.bottleneck.bias[1] = float("nan") if entry == "model" else float("inf")
    path = tmp_path / f"w{suffix}"
    if entry == "ema":
        save_checkpoint(path, tiny, ema_model=broken)
    else:
        save_checkpoint(path, broken)
    assert refusal(path) == (f": tensor bottleneck.bias ({entry}) holds NaN or infinite values; no usable model can "
                             f"be built from it")


def test_inference_on_an_arch_bomb_is_one_line_and_allocates_nothing(repo_root, tmp_path, checkpoint):
    """The issue's 36 TB case, as a command: exit 1, one line, no traceback, well under 1 GiB at its peak."""
    resaved(checkpoint, lambda raw: raw["arch"].update(bottleneck_features=10**6))
    write_image(tmp_path / "a.png", skdata.astronaut()[:24, :20])
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        child = subprocess.Popen([sys.executable, "inference.py", "--weights", str(checkpoint), "-i",
                                  str(tmp_path / "a.png"), "-o", str(tmp_path / "out")], cwd=repo_root, stdout=out,
                                 stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})
        _, status, usage = os.wait4(child.pid, 0)  # the rusage of that child alone
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 1
    assert (tmp_path / "stderr").read_text().splitlines() == [
        f"error: {checkpoint}: arch field 'bottleneck_features' must be an integer from 1 to 2048, got 1000000"]
    assert usage.ru_maxrss < ONE_GIB_KIB, f"peak {usage.ru_maxrss / 2**10:.0f} MiB"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_resume_from_a_damaged_last_names_a_whole_checkpoint_and_its_command_works(repo_root, data, tmp_path):
    run_train(repo_root, data, tmp_path, "--epochs", "3", "--stop-at-step", "5")  # pauses: last and best at step 5
    last, best = tmp_path / "t" / "checkpoints" / "last.pth", tmp_path / "t" / "checkpoints" / "best.pth"
    flip_tensor_bytes(last)
    refused = subprocess.run([sys.executable, "train.py", "--output-dir", str(tmp_path), "--run-name", "t",
                              "--resume", "auto"], cwd=repo_root, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    line, = refused.stderr.splitlines()
    command = (f"python train.py --output-dir {tmp_path} --run-name t --resume {best}")
    assert line == (f"error: {last}: damaged: its contents do not match the SHA-256 recorded when it was saved; "
                    f"{best} (step 5) is whole: resume from it with: {command}")
    resumed = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=repo_root, capture_output=True,
                             text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {best} at step 5" in resumed.stdout and "run complete: step 15" in resumed.stdout
    assert load_checkpoint(last)["step"] == 15  # the damaged file was replaced by a whole one

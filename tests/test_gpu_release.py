"""scripts/state_parts.py (split / join with sha256) and scripts/gpu_release.py's planning, without a GPU."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from srdensenet import run_folder
from srdensenet.config import config_to_dict, parse_config, preset_config

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


parts = _load("state_parts")
release = _load("gpu_release")


def test_split_and_join_round_trip(tmp_path):
    data = bytes(range(256)) * 10_000  # 2.44 MiB
    source = tmp_path / "last.pth"
    source.write_bytes(data)
    manifest = parts.split(source, tmp_path / "out", max_mib=1)
    info = json.loads(manifest.read_text())
    assert [p["size"] for p in info["parts"]] == [2**20, 2**20, len(data) - 2**21]
    assert info["sha256"] == parts.sha256_of(source)
    joined = parts.join(manifest, tmp_path / "again" / "last.pth")
    assert joined.read_bytes() == data
    assert parts.main(["verify", str(manifest)]) == 0


def test_a_damaged_or_missing_part_leaves_no_file(tmp_path, capsys):
    source = tmp_path / "state.bin"
    source.write_bytes(b"x" * 3000)
    manifest = parts.split(source, tmp_path / "out", max_mib=1000 / 2**20)
    part = tmp_path / "out" / "state.bin.part01"
    part.write_bytes(b"y" + part.read_bytes()[1:])
    target = tmp_path / "joined.bin"
    assert parts.main(["join", str(manifest), "--output", str(target)]) == 1
    assert "does not match its sha256" in capsys.readouterr().err and not target.exists()
    part.unlink()
    with pytest.raises(parts.PartsError, match="missing"):
        parts.join(manifest, target)
    assert not target.exists() and not list(tmp_path.glob(".joined.bin.*"))


def test_saved_plan_options_reproduce_the_plan_exactly():
    config, _ = parse_config(["--preset", "release", "--data-on-device", "--batch-size", "128", "--learning-rate",
                              "5.65685e-4", "--max-steps", "21000", "--train-dirs", "data/photo_pool_pack/train",
                              "--no-augment", "--adam-betas", "0.9", "0.99"])
    options = release.saved_plan_options(config_to_dict(config))
    again, _ = parse_config(["--preset", "release", *options, "--cuda-graph", "--device", "cpu"])
    plan, new = run_folder.make_plan(config, "bf16"), run_folder.make_plan(again, "bf16")
    assert run_folder.plan_changes(json.loads(json.dumps(plan)), new) == {}


def test_free_options_drop_the_plan_and_graphs_off_the_pool():
    options = ["--batch-size", "256", "--channels-last", "--data-on-device", "--cuda-graph", "--compile",
               "--compile-mode", "default"]
    assert release.free_options(options, True) == ["--channels-last", "--cuda-graph", "--compile", "--compile-mode",
                                                   "default"]
    assert release.free_options(options, False) == ["--channels-last", "--compile", "--compile-mode", "default"]


def test_fresh_plan_scales_the_learning_rate_and_fits_the_schedule_to_the_time(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    for k in range(4):
        (train / f"{k}.png").write_bytes(b"")  # counted, not read
    args = release.parse_args(["all", "--train-dirs", str(train), "--jpeg-prescale", "1", "--epoch-seconds", "30"])
    plan = release.fresh_plan(args, ["--batch-size", "128", "--data-on-device"], rate=10_000, train_seconds=300)
    values = dict(zip(plan[::2], plan[1::2]))
    assert float(values["--learning-rate"]) == pytest.approx(2e-4 * 2)  # sqrt(128 / 32)
    assert int(values["--max-steps"]) == int(10_000 * 300 * 0.85 // 128)
    assert int(values["--patches-per-image"]) == math.ceil(10_000 * 30 / 4)
    assert values["--warmup-steps"] == "200"
    short = dict(zip(*[iter(release.fresh_plan(args, ["--batch-size", "32"], rate=20, train_seconds=60))] * 2))
    assert short["--max-steps"] == "31" and short["--warmup-steps"] == "3"  # not 200 warm-up steps of 31
    assert release.parse_args(["train", "--", "--num-blocks", "2"]).train_args == ["--num-blocks", "2"]


def test_variant_comes_from_the_bench_or_falls_back(tmp_path):
    best = {"name": "+ CUDA graph", "patches_per_second": 9000.0, "train_options": ["--batch-size", "256",
                                                                                     "--data-on-device"]}
    (tmp_path / "bench.json").write_text(json.dumps({"best": best, "rows": []}))
    options, rate, _, overhead = release.choose_variant(tmp_path, True, "")
    assert (options, rate, overhead) == (best["train_options"], 9000.0, 0.0)
    compiled = {**best, "compile_mode": "default", "wall_seconds": 95.0}
    (tmp_path / "bench.json").write_text(json.dumps({"best": compiled, "rows": []}))
    assert release.choose_variant(tmp_path, True, "")[3] == 95.0  # its compile is paid again when training
    options, _, why, _ = release.choose_variant(tmp_path, False, "")
    assert "--no-data-on-device" in options and "tests failed" in why
    assert release.choose_variant(tmp_path, True, "--batch-size 64")[0] == ["--batch-size", "64"]
    assert preset_config("release").batch_size == release.BASE_BATCH


def test_data_comes_from_the_pool_unless_folders_are_named():
    args = release.parse_args([])
    assert (args.train_dirs, args.valid_dirs) == (["data/photo_pool_pack/train"], ["data/photo_pool_pack/valid"])
    assert args.jpeg_prescale == 1.0 and args.out == "runs/gpu_release/out" and args.part_mib == 0
    args = release.parse_args(["train", "--pool", "data/mine", "--valid-dirs", "data/Set5", "data/Set14"])
    assert (args.train_dirs, args.valid_dirs) == (["data/mine/train"], ["data/Set5", "data/Set14"])


def test_summary_warns_only_past_the_limits_it_is_given(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    for name, size in (("a.bin", 10), ("b.bin", 3 * 2**20)):
        (out / name).write_bytes(b"x" * size)
    release.write_summary(work, out, ["run"])
    summary = (out / "summary.txt").read_text()
    assert "WARNING" not in summary and "b.bin  3,145,728 bytes" in summary
    release.write_summary(work, out, ["run"], max_files=2)
    assert "WARNING: 3 files (limit 2)" in (out / "summary.txt").read_text()
    release.write_summary(work, out, ["run"], max_mib=1)
    assert "over 1 MiB: ['b.bin']" in (out / "summary.txt").read_text()

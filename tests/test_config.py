import dataclasses
import subprocess
import sys

import pytest

from srdensenet.cli.options import parse_memory_size
from srdensenet.config import (
    PRESETS,
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    make_parser,
    parse_config,
    preset_config,
    validate_config,
)


def test_preset_then_overrides_in_order():
    config, _ = parse_config(["--preset", "demo", "--upscale-factor", "4", "--batch-size", "3", "--batch-size", "5"])
    assert config.upscale_factor == 4 and config.batch_size == 5
    assert config.num_blocks == PRESETS["demo"]["num_blocks"]


def test_booleans_and_lists():
    argv = ["--no-channels-last", "--compile", "--valid-dirs", "a", "b", "--adam-betas", "0.8", "0.9"]
    config, _ = parse_config(argv)
    assert config.channels_last is False and config.compile is True
    assert config.valid_dirs == ["a", "b"] and config.adam_betas == [0.8, 0.9]


@pytest.mark.parametrize("argv,value", [
    ([], None), (["--channels-last"], True), (["--no-channels-last"], False), (["--channels-last", "true"], True),
    (["--channels-last", "false"], False), (["--channels-last", "auto"], None), (["--channels-last=Auto"], None),
    (["--no-channels-last", "--channels-last", "auto"], None), (["--channels-last", "auto", "--channels-last"], True),
])
def test_channels_last_is_true_false_or_auto(argv, value):
    assert parse_config(argv)[0].channels_last is value  # None: auto, measured when training starts


def test_channels_last_auto_in_the_api_saved_configs_and_help():
    assert apply_overrides(Config(), {"channels_last": "auto"}).channels_last is None
    assert config_from_dict({"channels_last": None}).channels_last is None
    assert config_from_dict({"channels_last": False}).channels_last is False
    with pytest.raises(ConfigError, match="--channels-last: expected true, false or auto, got 'yes'"):
        apply_overrides(Config(), {"channels_last": "yes"})
    with pytest.raises(ConfigError, match="--channels-last must be true, false or auto"):
        validate_config(dataclasses.replace(Config(), channels_last=1))
    shown = " ".join(make_parser().format_help().split())
    assert "--channels-last [true|false|auto]" in shown and "(default auto)" in shown and "1.10x" in shown
    assert "--compile [true|false]" in shown  # a plain boolean takes no auto


def test_every_preset_is_valid():
    for name in PRESETS:
        assert isinstance(preset_config(name), Config)


@pytest.mark.parametrize("argv, fragment", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--upscale-factor", "two"], "--upscale-factor: expected int, got 'two'"),
    (["--upscale-factr", "2"], "did you mean --upscale-factor"),
    (["--upscale-factor", "5"], "--upscale-factor must be 2, 3, 4 or 8"),
    (["--learning-rate", "fast"], "--learning-rate: expected float"),
    (["--channels-last", "maybe"], "expected true, false or auto, got 'maybe'"),
    (["--compile", "auto"], "expected true or false, got 'auto'"),
])
def test_bad_arguments_exit_2_with_message(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert fragment in err[-1] and len(err) == 2 and "--help" in err[0]  # not buried under ~25 lines of usage


def test_unknown_field_names_closest():
    with pytest.raises(ConfigError, match="did you mean upscale_factor"):
        apply_overrides(Config(), {"upscale_facter": 2})


def test_round_trip_through_dict():
    config = preset_config("demo")
    assert config_from_dict(dataclasses.asdict(config)) == config


def test_cli_error_has_no_traceback(repo_root):
    result = subprocess.run([sys.executable, "-m", "srdensenet.config", "--preset", "nope"], cwd=repo_root,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "unknown preset 'nope'" in result.stderr


GiB, MiB = 2**30, 2**20


@pytest.mark.parametrize("text,size", [("4GB", 4 * GiB), ("512MB", 512 * MiB), ("1.5G", 3 * GiB // 2),
                                       ("2GiB", 2 * GiB), ("800000k", 800000 * 1024), ("4 gb", 4 * GiB),
                                       ("1073741824", GiB), ("100B", 100)])
def test_parse_memory_size(text, size):
    assert parse_memory_size(text) == size


@pytest.mark.parametrize("text", ["", "abc", "-1GB", "0", "0MB", "4XB", "nan", "inf", "1e9", "4iB", "GB", "4 G B"])
def test_bad_memory_size_says_what_is_expected(text):
    with pytest.raises(ValueError, match=r"expected a (positive )?size such as 4GB, 512MB or 1.5G, got"):
        parse_memory_size(text)

"""Each script's command line: --help lists the options it uses, booleans take the usual spellings, and a reader
that closes the pipe early ends the command quietly."""

import os
import re
import subprocess
import sys

import pytest

from srdensenet.config import Config, config_fields, make_parser, parse_config

ALL_FIELD_FLAGS = {"--" + name.replace("_", "-") for name in config_fields()}
# The library modules that print something when run (python -m), beside the top-level scripts.
COMMAND = {"config.py": ("-m", "srdensenet.config"), "model.py": ("-m", "srdensenet.model")}


def run(repo_root, *args, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=repo_root, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def help_options(text: str) -> set[str]:
    """The long options a --help text lists (at the start of a help line)."""
    return set(re.findall(r"^\s+(--[a-z][a-z0-9-]*)", text, flags=re.M))


@pytest.fixture(scope="module")
def helps(repo_root):
    texts = {}
    for script in ("train.py", "validate.py", "inference.py", "prepare_dataset.py", "config.py"):
        result = run(repo_root, *COMMAND.get(script, (script,)), "--help")
        assert result.returncode == 0 and not result.stderr, (script, result.stderr)
        texts[script] = result.stdout
    return texts


def test_train_help_lists_the_whole_config(helps):
    assert ALL_FIELD_FLAGS | {"--preset"} <= help_options(helps["train.py"])
    assert help_options(helps["config.py"]) == ALL_FIELD_FLAGS | {"--preset"}


def test_validate_help_lists_only_its_fields(helps):
    options = help_options(helps["validate.py"])
    assert options == {"--preset", "--valid-dirs", "--upscale-factor", "--device", "--precision", "--weights",
                       "--json", "--save-images", "--tile", "--self-ensemble", "--self-check", "--force", "--report",
                       "--threads", "--max-memory", "--max-pixels"}
    assert "--batch-size" not in helps["validate.py"] and "--learning-rate" not in helps["validate.py"]


def test_prepare_dataset_help_lists_its_fields_and_commands(helps):
    text = helps["prepare_dataset.py"]
    usage = text.split("\n\n")[0]
    assert "prepare_dataset.py subimages" in usage and "prepare_dataset.py lmdb" in usage
    assert help_options(text) == {"--preset", "--train-dirs", "--valid-dirs", "--hr-patch-size", "--jpeg-prescale",
                                  "--max-pixels", "--pool", "--lmdb", "--lr-scales", "--workers", "--force", "--pack",
                                  "--pack-dir"}


def test_inference_help_has_no_training_options(helps):
    options = help_options(helps["inference.py"])
    assert "--weights" in options and "--tile" in options and "--self-ensemble" in options
    # --max-pixels is the same limit as the config field of the same name
    assert not options & (ALL_FIELD_FLAGS - {"--device", "--precision", "--max-pixels"}) and "--preset" not in options


def test_unused_field_is_named_as_such(repo_root):
    result = run(repo_root, "validate.py", "--batch-size", "4", "--self-check")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--batch-size is a config field validate.py does not use" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("argv, expected", [
    (["--augment", "false"], False), (["--augment=true"], True), (["--no-augment"], False), (["--augment"], True),
    (["--augment", "no", "--augment", "YES"], True), (["--compile", "1"], True), (["--channels-last=off"], False),
    (["--no-augment", "--batch-size", "3"], False),
])
def test_boolean_spellings(argv, expected):
    config, _ = parse_config(argv)
    flag = argv[0].split("=")[0].removeprefix("--no-").removeprefix("--").replace("-", "_")
    assert getattr(config, flag) is expected


def test_bad_boolean_says_how_to_write_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--augment", "maybe"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.splitlines()[-1]
    assert "--augment" in message and "'maybe'" in message and "--augment false or --no-augment" in message


def test_switch_given_a_value_says_how_to_write_it(capsys):
    parser = make_parser(fields=())
    parser.add_argument("--dry-run", action="store_true")
    with pytest.raises(SystemExit):
        parse_config(["--dry-run", "false"], parser)
    assert "--dry-run takes no value, got 'false'" in capsys.readouterr().err


def test_script_switches_take_the_same_spellings(repo_root):
    from srdensenet.cli.validate import build_parser

    config, args = parse_config(["--self-ensemble", "false", "--self-check=true"], build_parser())
    assert args.self_ensemble is False and args.self_check is True and isinstance(config, Config)
    _, args = parse_config(["--no-self-check"], build_parser())
    assert args.self_check is False and args.self_ensemble is False


def test_restricted_parser_keeps_the_preset_values():
    config, _ = parse_config(["--preset", "demo", "--valid-dirs", "x"], make_parser(fields=["valid_dirs"]))
    assert config.valid_dirs == ["x"] and config.num_blocks == 3  # the demo preset's model, though not an option
    with pytest.raises(ValueError, match="no config field 'valid_dir'"):
        make_parser(fields=["valid_dir"])


@pytest.mark.parametrize("args", [["config.py"], ["config.py", "--help"], ["validate.py", "--help"],
                                  ["prepare_dataset.py", "--help"], ["model.py"]])
def test_closed_pipe_ends_quietly(repo_root, args):
    """`python -m srdensenet.config | head -1`: the reader is gone before the command writes (closed at once here, so
    the broken pipe is certain, not a race)."""
    args = [*COMMAND.get(args[0], args[:1]), *args[1:]]
    process = subprocess.Popen([sys.executable, *args], cwd=repo_root, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    code = process.wait(timeout=120)
    assert stderr == "" and code in (0, 141), (code, stderr)


def test_pipe_into_head_in_a_shell(repo_root):
    command = f"set -o pipefail; {sys.executable} -m srdensenet.config --preset demo | head -1"
    result = subprocess.run(["bash", "-c", command], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("upscale_factor") and result.stderr == ""
    assert result.returncode in (0, 141)

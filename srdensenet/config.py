"""One configuration for every script: a typed dataclass, named presets, and command-line overrides.

Every script loads it the same way::

    python train.py --preset paper --upscale-factor 2 --batch-size 16 --no-channels-last

``--preset NAME`` is applied first, then each ``--field-name VALUE`` override in the order given.
Booleans are ``--flag`` / ``--no-flag`` or ``--flag true|false`` (also yes/no, on/off, 1/0, and ``--flag=false``);
one that may also be decided by the program (``bool | None``: ``channels_last``) takes ``--flag auto`` (None);
lists take space-separated values (``--valid-dirs a b``). A script that uses only some fields offers only those
(``make_parser(fields=...)``), so its ``--help`` lists what it reads.
An unknown field or preset, or a value of the wrong type, exits with code 2 and a message naming it
(with the closest valid names) and no traceback. Nothing here ever evaluates a string as code.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import sys
import typing
from dataclasses import dataclass, field, fields

from .choices import LAYOUTS, SCALES, TRAINING_PRECISIONS, VARIANTS
from .image_header import DEFAULT_MAX_PIXELS
from .limits import ARCH_BOUNDS, MAX_PARAMETERS, parameter_count


def option(default: object = dataclasses.MISSING, help: str = "", *, factory=dataclasses.MISSING) -> object:
    """A Config field with the text --help shows for it."""
    return field(default=default, default_factory=factory, metadata={"help": help})


# Also the help of the commands' own --max-pixels (inference.py, prepare_dataset.py's commands).
MAX_PIXELS_HELP = ("refuse an image whose header claims more pixels (width x height), before it is decoded: one line "
                   "naming it, the others go on")


@dataclass
class Config:
    # ---- model (docs/protocol.md, Architecture notes; the paper's SRDenseNet_All x4 by default) ----
    upscale_factor: int = option(4, "2, 3, 4 or 8")
    variant: str = option("all", '"h": last block only, "hl": low-level + last block, "all": low-level + every block')
    layout: str = option("paper", '"paper": 3x3 deconvs + ReLU after bottleneck; "port": the reference port\'s exact '
                         'layers')
    num_blocks: int = option(8, "dense blocks")
    layers_per_block: int = option(8, "conv layers per dense block")
    growth_rate: int = option(16, "feature maps added by each conv layer of a block")
    num_features: int = option(128, "low-level feature maps (first 3x3 conv)")
    bottleneck_features: int = option(256, "1x1 bottleneck width = deconvolution width")

    # ---- data ----
    train_dirs: list[str] = option(factory=lambda: ["data/demo/train"], help="HR image folders (or LMDBs)")
    train_lr_lmdb: str = option("", "optional pre-built LR LMDB matching a single HR LMDB in train_dirs")
    valid_dirs: list[str] = option(factory=lambda: ["data/demo/valid"], help="HR-only or HR/ + LR_bicubic/X{s}/")
    hr_patch_size: int = option(100, "HR training patch side (the paper: 100 -> 25x25 LR at x4)")
    patches_per_image: int = option(16, "random patches drawn per image per epoch when training from a folder")
    augment: bool = option(True, "random flips and 90-degree rotations, applied to LR and HR together")
    num_workers: int = option(2, "data-loader worker processes (0 = load in the main process)")
    jpeg_prescale: float = option(1.0, "area-downscale training photos by this factor first (>1 hides JPEG artefacts)")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, MAX_PIXELS_HELP)

    # ---- optimisation (the paper: MSE, Adam, batch 32; the schedule is not stated in the paper) ----
    batch_size: int = option(32, "global batch: divided across processes under torchrun")
    epochs: int = 100
    max_steps: int = option(0, "planned length in optimiser steps (0 = all epochs), part of the plan; to pause: "
                            "stop_at_step")
    learning_rate: float = 1e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    lr_schedule: str = option("step", '"step" (x lr_gamma every lr_step_epochs), "cosine" or "constant"')
    lr_step_epochs: int = 30
    lr_gamma: float = 0.1
    warmup_steps: int = option(0, "linear learning-rate warm-up over the first optimiser steps")
    grad_clip: float = option(0.0, "clip the global gradient norm to this value (0 = off)")
    ema_decay: float = option(0.0, "exponential moving average of the weights (0 = off, e.g. 0.999)")

    # ---- speed ----
    device: str = option("auto", '"auto" (CUDA when present), "cpu", "cuda", "cuda:1"')
    precision: str = option("auto", "auto (hardware.AUTO_PRECISION; docs/inference.md), fp32, bf16, fp16 (CUDA)")
    channels_last: bool | None = option(None, "training memory format: true = channels_last (NHWC), false = NCHW, "
                                        "auto = NCHW unless channels_last trains >= 1.10x as fast, measured once per "
                                        "machine, model, patch and precision (layout_probe.py; channels_last on "
                                        "CUDA)")
    compile: bool = option(False, "torch.compile the training model")
    compile_mode: str = option("default", "torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune, "
                               "...")
    data_on_device: bool = option(False, "training images kept on the device; crops, flips and LR made there (fast "
                                  "path)")
    cuda_graph: bool = option(False, "capture the whole step in one CUDA graph (CUDA, one process, needs "
                              "--data-on-device)")

    # ---- bookkeeping ----
    seed: int = 0
    output_dir: str = "runs"
    run_name: str = "srdensenet"
    resume: str = option("", '"auto" (this run\'s last checkpoint if any) or a checkpoint path: continue exactly')
    resume_override: bool = option(False, "accept a changed plan on resume (each change is kept in history.jsonl)")
    stop_at_step: int = option(0, "pause after this many optimiser steps in total, without changing the plan (0 = off)")
    time_limit: float = option(0.0, "pause after this many minutes of training in this process (0 = off)")
    init_weights: str = option("", "initialise from a checkpoint for fine-tuning (optimiser state not restored)")
    init_strict: bool = option(True, "demand every tensor of init_weights to match")
    validate_every: int = option(1, "epochs between validations")
    log_every: int = option(20, "optimiser steps between TensorBoard scalars")
    num_log_images: int = option(3, "validation images written to TensorBoard")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's

# Presets change only what differs from the defaults above, so each one reads as a short recipe.
PRESETS: dict[str, dict[str, object]] = {
    # The paper's SRDenseNet_All x4 recipe; point train_dirs/valid_dirs at your data (docs/data.md).
    "paper": {},
    # A small member of the same family that trains on CPU in minutes on the embedded scikit-image photos.
    "demo": {
        "num_blocks": 3,
        "layers_per_block": 4,
        "growth_rate": 16,
        "num_features": 32,
        "bottleneck_features": 32,
        "upscale_factor": 2,
        "hr_patch_size": 64,
        "batch_size": 16,
        "patches_per_image": 32,
        "epochs": 25,
        "learning_rate": 2e-3,
        "lr_schedule": "cosine",
        "warmup_steps": 20,
        "validate_every": 5,
        "run_name": "demo",
    },
    # The released x4 model: SRDenseNet_All, paper layout, on the Debian photo pool (docs/protocol.md, Data
    # sources), prepared by `prepare_dataset.py --preset release` (photos area-downscaled by 2, cut into 192x192
    # sub-images). On a GPU machine, train from the packed pool instead (`prepare_dataset.py --preset release
    # --pack`, ~29 MiB): --train-dirs data/photo_pool_pack/train --valid-dirs data/photo_pool_pack/valid.
    # 13,800 steps of batch 32 took 5.5 minutes on one H200 (the README's model card); on this CPU ~3 days.
    "release": {
        "train_dirs": ["data/photo_pool/train"],
        "valid_dirs": ["data/photo_pool/valid"],
        "patches_per_image": 12,
        "epochs": 1000,
        "max_steps": 13800,
        "run_name": "release_x4",
        "lr_schedule": "cosine",
        "learning_rate": 2e-4,
        "warmup_steps": 200,
        "ema_decay": 0.999,
        "grad_clip": 1.0,
        "num_workers": 8,
    },
}


class ConfigError(ValueError):
    """A field, preset or value that the configuration rejects (reported without a traceback)."""


def preset_config(name: str) -> Config:
    """The default Config with one preset applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{_suggest(name, PRESETS)}; presets: {', '.join(PRESETS)}")
    return dataclasses.replace(Config(), **PRESETS[name])


def config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(Config)}


def _suggest(name: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _field_type(f: dataclasses.Field) -> object:
    return typing.get_type_hints(Config)[f.name]


def _parse_scalar(text: str, kind: type, flag: str) -> object:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{flag}: expected {kind.__name__}, got {text!r}") from None


TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
AUTO = "auto"  # what --flag auto parses to (None would read as "not given"); apply_overrides makes it None
OPTIONAL_BOOL = bool | None  # a boolean the program may decide (None: "auto")


class BoolAction(argparse.Action):
    """``--flag`` (true), ``--flag VALUE`` / ``--flag=VALUE`` with VALUE one of TRUE_WORDS / FALSE_WORDS (and AUTO
    where ``auto``); the ``--no-flag`` spelling is a second, help-less option (add_bool_option registers both)."""

    def __init__(self, option_strings: list[str], dest: str, auto: bool = False, **kwargs: typing.Any) -> None:
        self.auto = auto
        kwargs.update(nargs="?", const=True, metavar="true|false|auto" if auto else "true|false")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: typing.Any,
                 option_string: str | None = None) -> None:
        if isinstance(values, str):
            word = values.lower()
            if not (word in TRUE_WORDS + FALSE_WORDS or self.auto and word == AUTO):
                flag, expected = self.option_strings[0], "true, false or auto" if self.auto else "true or false"
                spellings = f"{flag}, {flag} false{f', {flag} auto' if self.auto else ''} or --no-{flag[2:]}"
                raise argparse.ArgumentError(self, f"expected {expected}, got {values!r} (write {spellings})")
            values = AUTO if word == AUTO else word in TRUE_WORDS
        setattr(namespace, self.dest, values)


class _FalseAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: typing.Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: typing.Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, False)


def add_bool_option(group: argparse.ArgumentParser | OptionGroup, flag: str, help: str, default: bool | None = None,
                    dest: str | None = None, auto: bool = False) -> None:
    """A boolean option: ``--flag``, ``--flag true|false`` (and the other spellings), ``--no-flag``; with ``auto``
    also ``--flag auto`` (parsed as AUTO)."""
    dest = dest or flag[2:].replace("-", "_")
    group.add_argument(flag, dest=dest, action=BoolAction, default=default, auto=auto,
                       help=f"{help} (--no-{flag[2:]} = false)")
    group.add_argument(f"--no-{flag[2:]}", dest=dest, action=_FalseAction, default=default, help=argparse.SUPPRESS)


class OptionGroup:
    """An argument group of a config parser: what it adds is also recorded in the parser's ``options`` (flag ->
    argparse Action), which the unknown-option message reads."""

    def __init__(self, parser: ConfigParser, title: str) -> None:
        self.parser, self.group = parser, parser.add_argument_group(title)

    def add_argument(self, *args: typing.Any, **kwargs: typing.Any) -> argparse.Action:
        action = self.group.add_argument(*args, **kwargs)
        self.parser.options.update(dict.fromkeys(action.option_strings, action))
        return action


class ConfigParser(argparse.ArgumentParser):
    """argparse, but unknown options get a 'did you mean' and every error exits 2 without a traceback.

    The error is the last line printed, after a one-line pointer to --help instead of argparse's usage, which lists
    every config field (~25 lines) and would bury the message.
    """

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        self.options: dict[str, argparse.Action] = {}  # option string -> Action (argparse keeps its map private)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: typing.Any, **kwargs: typing.Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.options.update(dict.fromkeys(action.option_strings, action))
        return action

    def option_group(self, title: str) -> OptionGroup:
        """An argument group whose options are recorded too (use it instead of add_argument_group)."""
        return OptionGroup(self, title)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"usage: {self.prog} [options]   (all options: python {self.prog} --help)\n"
                     f"{self.prog}: error: {message}\n")


@functools.cache
def field_help() -> dict[str, str]:
    """Each field's help text (``option(..., help)`` above), shown by --help."""
    return {f.name: f.metadata["help"] for f in fields(Config) if f.metadata.get("help")}


def make_parser(description: str = "", fields: typing.Iterable[str] | None = None, usage: str | None = None,
                epilog: str | None = None) -> ConfigParser:
    """A parser holding --preset and one --field-name option per Config field; scripts add their own options.

    ``fields``: only these fields get options (a script that reads a few of them shows only those in --help; the
    others keep their preset's values). ``usage`` / ``epilog``: argparse's, e.g. to name a script's subcommands.
    """
    known = config_fields()
    chosen = list(known) if fields is None else list(fields)
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ConfigError(f"make_parser: no config field {unknown[0]!r}{_suggest(unknown[0], known)}")
    parser = ConfigParser(description=description, allow_abbrev=False, usage=usage, epilog=epilog,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    title = "configuration (config.py; --preset first, then overrides in order)"
    if fields is not None:
        title += "; only the fields this script uses"
    group = parser.option_group(title)
    group.add_argument("--preset", default="paper", help=f"one of: {', '.join(PRESETS)}")
    for name in chosen:
        _add_field_option(group, known[name])
    return parser


def _add_field_option(group: OptionGroup, f: dataclasses.Field) -> None:
    flag, kind = "--" + f.name.replace("_", "-"), _field_type(f)
    default, doc = getattr(Config(), f.name), field_help().get(f.name, "")
    # Values are kept as raw strings here and typed in apply_overrides, so errors name the field clearly.
    if kind is bool or kind == OPTIONAL_BOOL:
        shown = AUTO if default is None else str(default).lower()
        add_bool_option(group, flag, f"{doc} (default {shown})", dest=f.name, auto=kind == OPTIONAL_BOOL)
    elif typing.get_origin(kind) is list:
        group.add_argument(flag, dest=f.name, nargs="*", default=None, metavar="VALUE",
                           help=f"{doc} (default {default})")
    else:
        group.add_argument(flag, dest=f.name, default=None, metavar=getattr(kind, "__name__", "VALUE").upper(),
                           help=f"{doc} (default {default!r})")


def apply_overrides(config: Config, overrides: dict[str, object]) -> Config:
    """Return config with overrides applied; string values are converted to each field's type."""
    known = config_fields()
    values = {}
    for name, raw in overrides.items():
        if name not in known:
            raise ConfigError(f"unknown config field {name!r}{_suggest(name, known)}")
        kind = _field_type(known[name])
        flag = "--" + name.replace("_", "-")
        if typing.get_origin(kind) is list:
            item_kind = typing.get_args(kind)[0]
            items = raw if isinstance(raw, (list, tuple)) else [raw]
            values[name] = [_parse_scalar(str(v), item_kind, flag) if isinstance(v, str) else v for v in items]
        elif kind is bool:
            if not isinstance(raw, bool):
                raise ConfigError(f"{flag}: expected a boolean, got {raw!r}")
            values[name] = raw
        elif kind == OPTIONAL_BOOL:  # a saved null, or AUTO as parsed, is "auto"
            if not (raw is None or isinstance(raw, bool) or raw == AUTO):
                raise ConfigError(f"{flag}: expected true, false or auto, got {raw!r}")
            values[name] = None if raw == AUTO else raw
        else:
            values[name] = _parse_scalar(raw, kind, flag) if isinstance(raw, str) else kind(raw)
    config = dataclasses.replace(config, **values)
    validate_config(config)
    return config


def _one_of(values: tuple) -> str:
    """(2, 3, 4, 8) -> "2, 3, 4 or 8"."""
    return ", ".join(map(str, values[:-1])) + f" or {values[-1]}"


def validate_config(config: Config) -> None:
    """Reject values that are well-typed but meaningless, naming the field."""
    checks = [
        (config.upscale_factor in SCALES, f"--upscale-factor must be {_one_of(SCALES)}"),
        (config.variant in VARIANTS, f"--variant must be {_one_of(VARIANTS)}"),
        (config.layout in LAYOUTS, f"--layout must be {_one_of(LAYOUTS)}"),
        (config.channels_last is None or isinstance(config.channels_last, bool),
         "--channels-last must be true, false or auto"),
        (config.precision in TRAINING_PRECISIONS,
         f"--precision must be {', '.join(TRAINING_PRECISIONS[:-1])} or {TRAINING_PRECISIONS[-1]}"),
        (config.lr_schedule in ("step", "cosine", "constant"), "--lr-schedule must be step, cosine or constant"),
        (config.compile_mode in COMPILE_MODES, f"--compile-mode must be one of {', '.join(COMPILE_MODES)}"),
        (config.data_on_device or not config.cuda_graph, "--cuda-graph needs --data-on-device"),
        (not (config.data_on_device and config.train_lr_lmdb), "--data-on-device makes the LR on the device; it "
                                                              "does not read --train-lr-lmdb"),
        *((1 <= getattr(config, name) <= bound, f"--{name.replace('_', '-')} must be from 1 to {bound}")
          for name, bound in ARCH_BOUNDS.items()),
        (config.batch_size >= 1, "--batch-size must be >= 1"),
        (config.epochs >= 1, "--epochs must be >= 1"),
        (config.max_steps >= 0, "--max-steps must be >= 0"),
        (config.stop_at_step >= 0, "--stop-at-step must be >= 0"),
        (config.time_limit >= 0, "--time-limit must be >= 0 (minutes)"),
        (config.learning_rate > 0, "--learning-rate must be > 0"),
        (len(config.adam_betas) == 2, "--adam-betas takes two values"),
        (config.hr_patch_size >= 2 * config.upscale_factor, "--hr-patch-size is too small"),
        (config.patches_per_image >= 1, "--patches-per-image must be >= 1"),
        (config.num_workers >= 0, "--num-workers must be >= 0"),
        (config.jpeg_prescale >= 1.0, "--jpeg-prescale must be >= 1"),
        (config.max_pixels >= 1, "--max-pixels must be >= 1"),
        (0.0 <= config.ema_decay < 1.0, "--ema-decay must be in [0, 1)"),
        (config.validate_every >= 1, "--validate-every must be >= 1"),
        (config.lr_step_epochs >= 1, "--lr-step-epochs must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    count = parameter_count(model_arch(config))  # sizes each within bounds can still multiply into billions
    if count > MAX_PARAMETERS:
        raise ConfigError(f"the model sizes (--num-blocks ... --bottleneck-features) make {count:,} parameters, "
                          f"above the limit of {MAX_PARAMETERS:,} (limits.py)")


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the Config from parsed arguments: preset first, then the overrides given on the command line."""
    config = preset_config(args.preset)
    overrides = {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name, None) is not None}
    return apply_overrides(config, overrides)


def parse_config(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None,
                 ) -> tuple[Config, argparse.Namespace]:
    """Parse argv into (Config, the script's own options). Exits 2 with a clear message on any error."""
    parser = parser or make_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(_unknown_option_message(parser, unknown[0], sys.argv[1:] if argv is None else list(argv)))
    try:
        return config_from_args(args), args
    except ConfigError as error:
        parser.error(str(error))


def _unknown_option_message(parser: argparse.ArgumentParser, token: str, argv: list[str]) -> str:
    """Why a token was not understood: a value after a switch that takes none, a config field this script does not
    use, or a misspelling (with the closest options)."""
    options = [o for o in parser.options if o.startswith("--")]
    position = argv.index(token) if token in argv else -1
    before = parser.options.get(argv[position - 1]) if position > 0 else None
    if before is not None and before.nargs == 0 and before.option_strings[0] != "-h":
        return f"{argv[position - 1]} takes no value, got {token!r} (write {argv[position - 1]} alone, or leave it out)"
    field = token.split("=")[0][2:].replace("-", "_") if token.startswith("--") else ""
    if field in config_fields():
        return f"{token.split('=')[0]} is a config field {parser.prog} does not use (python {parser.prog} --help)"
    return f"unknown option {token}{_suggest(token.split('=')[0], options)}"


def model_arch(config: Config) -> dict[str, object]:
    """The SRDenseNet constructor arguments held in a config."""
    names = ("upscale_factor", "variant", "layout", "num_blocks", "layers_per_block", "growth_rate", "num_features",
             "bottleneck_features")
    return {name: getattr(config, name) for name in names}


def config_to_dict(config: Config) -> dict[str, object]:
    return dataclasses.asdict(config)


def config_from_dict(values: dict[str, object]) -> Config:
    """Rebuild a Config saved in a checkpoint or run folder; fields unknown to this version are ignored."""
    known = config_fields()
    return apply_overrides(Config(), {k: v for k, v in values.items() if k in known})


def main() -> int:
    """`python -m srdensenet.config --preset demo` prints the resolved configuration."""
    resolved, _ = parse_config(parser=make_parser(__doc__))
    for name, value in dataclasses.asdict(resolved).items():
        print(f"{name:22s} {AUTO if value is None else value}")  # None is "auto" (channels_last)
    return 0


__all__ = ["Config", "PRESETS", "ConfigError", "parse_config", "make_parser", "preset_config", "apply_overrides",
           "config_to_dict", "config_from_dict", "validate_config", "model_arch", "add_bool_option", "BoolAction"]


if __name__ == "__main__":
    from .fileio import exit_quietly_on_broken_pipe

    exit_quietly_on_broken_pipe(main)

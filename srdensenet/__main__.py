"""``python -m srdensenet COMMAND ...``: the console command without its launcher."""

from .cli import entry

entry()

"""What every ``adaptive-offload`` subcommand shares: exit codes, the parser, argument types."""

from __future__ import annotations

import argparse
from typing import Any, Callable, NoReturn

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit with EXIT_USAGE.

    Options must be spelled whole: argparse's prefix matching would read an option a newer
    or older version lacks (``--token``) as another one (``--token-file``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault('allow_abbrev', False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print the usage error on one line and exit with EXIT_USAGE."""
        self.exit(EXIT_USAGE, f'{self.prog}: error: {message}\n')


def non_negative_int(text: str) -> int:
    """Argument type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'{text} is negative')
    return value


def non_negative(text: str) -> float:
    """Argument type: a number of at least 0."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'{text} is negative')
    return value


def above_zero(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """Argument type: a ``kind`` (int or float) above 0."""
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f'{text} is not above 0')
        return value
    return parse


def architectures(text: str) -> list[tuple[str, str | None]]:
    """Parse ``ARCH[=CHECKPOINT],...``: (architecture, checkpoint or None) in the given order.

    Raises:
        argparse.ArgumentTypeError: For an empty entry or an architecture named twice.
    """
    out: list[tuple[str, str | None]] = []
    for entry in text.split(','):
        arch, eq, checkpoint = (part.strip() for part in entry.partition('='))
        if not arch:
            raise argparse.ArgumentTypeError(f'empty architecture in {text!r}')
        if arch in (a for a, _ in out):
            raise argparse.ArgumentTypeError(f'architecture {arch!r} named twice')
        out.append((arch, checkpoint if eq else None))
    return out

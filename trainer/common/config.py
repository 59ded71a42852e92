"""Settings dataclasses <-> argparse: every default and its help text live in one place."""

import argparse
import dataclasses
from typing import Any, TypeVar, get_type_hints

from trainer.common.errors import SettingsError

T = TypeVar("T")


def setting(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field whose help text becomes the CLI flag's help."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One flag per field: `--name-with-dashes`, or with a prefix `--prefix-name` (the
    `--prefix_name` spelling of earlier releases is still accepted)."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flags = list(dict.fromkeys(["--" + (prefix + f.name).replace("_", "-"),
                                    "--" + prefix + f.name.replace("_", "-")]))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = hints[f.name]
        help_text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(*flags, dest=prefix + f.name,
                                action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        elif kind in (list[str], tuple[str, ...]):
            parser.add_argument(*flags, dest=prefix + f.name, default=default, help=help_text,
                                type=lambda s: [x.strip() for x in s.split(",") if x.strip()])
        else:
            parser.add_argument(*flags, dest=prefix + f.name, type=kind, default=default,
                                help=help_text)


def from_args(cls: type[T], args: argparse.Namespace, prefix: str = "") -> T:
    values = {f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls)}
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate:
        validate()
    return obj


def check(problems: list[str], what: str) -> None:
    if problems:
        raise SettingsError(f"invalid {what}: " + "; ".join(problems))

"""Job configs are frozen dataclasses; this turns one into argparse flags and back.

Each field becomes `--field-name` with its default shown in --help (once; an empty default is
not shown, and a help text that states its own default keeps it); the help text comes from
`field(metadata={"help": ...})`. Nested dataclasses are not flattened: jobs keep flat configs.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default once, and only when there is one to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "(default" in text or action.default in ("", None, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def add_arguments(parser: argparse.ArgumentParser, cls) -> argparse.ArgumentParser:
    """Add one flag per field of dataclass `cls` to parser."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs = dict(dest=f.name, default=default, help=f.metadata.get("help", ""))
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            base = typing.get_args(typ)[0] if typing.get_origin(typ) in (typing.Union, type(int | None)) else typ
            parser.add_argument(flag, type=base, **kwargs)
    return parser


def from_args(cls, namespace: argparse.Namespace):
    """Build dataclass `cls` from parsed arguments (fields only)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(namespace).items() if k in names})


def parse(cls, description: str, argv: list[str] | None = None):
    """Parse argv into a `cls` instance; bad values exit with one argparse error line."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=HelpFormatter)
    add_arguments(parser, cls)
    ns = parser.parse_args(argv)
    try:
        return from_args(cls, ns)
    except ValueError as e:
        parser.error(str(e))

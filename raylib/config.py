"""Job configs are frozen dataclasses; this turns one into argparse flags and back.

Each field becomes `--field-name` with its default shown in --help (once; an empty default is
not shown, and a help text that states its own default keeps it); the help text comes from
`field(metadata={"help": ...})`.

A config composed of others (TrainConfig holds a ModelConfig, a sweep holds a TrainConfig, the
extraction and prediction configs hold a FeatureRecipe) keeps flat flags: a field whose value is
a dataclass and whose metadata says `inline` contributes its part's flags as if they were its
own (`--fusion`, not `--model-fusion`), with the part's default as each flag's default. In
`inline`: "skip" names the part's fields that are no flags (dotted paths reach into its own
parts), "help" replaces a flag's help text. A field with metadata `flag: False` is never a flag
(it keeps its default, e.g. the visual_dim a store sets).
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


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _flags(cls, defaults=None, skip: tuple = (), helps: dict | None = None, prefix: str = ""):
    """(dest, field, type hint, default, help) of every flag of cls, parts inlined, in field order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("flag", True) is False:
            continue
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        inline = f.metadata.get("inline")
        if inline is not None:
            yield from _flags(hints[f.name], default, _inner_skip(f, skip), {**inline.get("help", {}), **(helps or {})},
                              f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, hints[f.name], default, (helps or {}).get(f.name, f.metadata.get("help", ""))


def _inner_skip(f: dataclasses.Field, skip: tuple) -> tuple:
    """The fields of f's inline part that are no flags: its own list and skip's paths into f."""
    return tuple(f.metadata["inline"].get("skip", ())) + tuple(s.split(".", 1)[1] for s in skip
                                                                 if s.startswith(f.name + "."))


def flag_values(cfg, skip: tuple = ()) -> dict:
    """{flag's field name: value} of a config instance, its inline parts' flags under their own names."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.name in skip or f.metadata.get("flag", True) is False:
            continue
        if f.metadata.get("inline") is not None:
            out.update(flag_values(getattr(cfg, f.name), _inner_skip(f, skip)))
        else:
            out[f.name] = getattr(cfg, f.name)
    return out


def add_arguments(parser: argparse.ArgumentParser, cls) -> argparse.ArgumentParser:
    """Add one flag per field of dataclass `cls` (and of its inline parts) to parser."""
    for dest, f, typ, default, text in _flags(cls):
        flag = "--" + f.name.replace("_", "-")
        kwargs = dict(dest=dest, default=default, help=text)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            base = typing.get_args(typ)[0] if typing.get_origin(typ) in (typing.Union, type(int | None)) else typ
            if "choices" not in kwargs:
                kwargs["metavar"] = f.name.upper()  # an inline part's dest is dotted (model.fbp_k)
            parser.add_argument(flag, type=base, **kwargs)
    return parser


def from_args(cls, namespace: argparse.Namespace, prefix: str = "", defaults=None):
    """Build dataclass `cls` (its inline parts too) from parsed arguments; a part's fields that are
    no flags keep the part's default."""
    values = vars(namespace)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("inline") is not None:
            part = getattr(defaults, f.name) if defaults is not None else _default(f)
            kwargs[f.name] = from_args(hints[f.name], namespace, f"{prefix}{f.name}.", part)
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
        elif defaults is not None:
            kwargs[f.name] = getattr(defaults, f.name)
    return cls(**kwargs)


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

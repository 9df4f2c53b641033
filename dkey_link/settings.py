"""Typed, validated TOML config tables for both sides: a dataclass schema in, a checked instance or one error out.

A schema is a dataclass whose fields are declared with :func:`setting`: a default, a help text (the one place
an option is described), and the rules a value must meet (bounds, choices, a pattern, a duration, a custom
check). :func:`load_table` checks a parsed TOML table against it and raises :class:`SettingsError`, whose
one-line message names the file, the key, the bad value and what is allowed, e.g.::

    /etc/dkey/config.toml: pairing.attempts = "five": not an integer (allowed: an integer from 1 to 20)

Why not a validation library: dkey_link may import only stdlib and ``protocol`` (tests/test_architecture.py),
the client starts on phones and watches where every import counts, and the Pi targets (aarch64, armv7l) would
need compiled wheels for pydantic-core or msgspec. The rules below are the whole of what the configs need.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

__all__ = [
    "MISSING",
    "Setting",
    "SettingsError",
    "check_keys",
    "describe",
    "format_duration",
    "load_table",
    "parse_duration",
    "sample_table",
    "setting",
]

T = TypeVar("T")

_META_KEY: Final = "dkey_link.settings"
_DURATION_RE: Final = re.compile(r"(?:[0-9]+[smhdw])+", re.ASCII)
_DURATION_PART_RE: Final = re.compile(r"([0-9]+)([smhdw])", re.ASCII)
_UNIT_SECONDS: Final[Mapping[str, int]] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAX_SHOWN: Final = 60  # a bad value is quoted in the message; a pasted blob must not flood the terminal


class _Missing:
    """The value of a key that is absent (a required key, or the key a cross-field rule needs)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


class SettingsError(ValueError):
    """A config value is wrong; str() is one line naming the file, the key, the bad value and what is allowed."""

    def __init__(self, file: str | Path, key: str, value: object, problem: str, allowed: str) -> None:
        self.file = str(file)
        self.key = key  # "section.key", or "section" for a whole table, or a top-level key
        self.value = value  # the bad value as read, or MISSING
        self.problem = problem
        self.allowed = allowed
        super().__init__(_one_line(f"{self.file}: {_shown(key, value)}: {problem} (allowed: {allowed})"))


@dataclass(frozen=True, slots=True)
class Setting:
    """The rules one schema field declares (see :func:`setting`)."""

    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[object, ...] | None = None
    pattern: str | None = None
    duration: bool = False
    check: Callable[[Any], object] | None = None
    allowed: str | None = None


def setting(
    default: object = dataclasses.MISSING,
    *,
    help: str,
    min: float | None = None,
    max: float | None = None,
    choices: Iterable[object] | None = None,
    pattern: str | None = None,
    duration: bool = False,
    check: Callable[[Any], object] | None = None,
    allowed: str | None = None,
) -> Any:
    """A dataclass field with a default and rules; min/max bound numbers, a string's length, or a duration's seconds.

    ``pattern`` must match the whole string; ``duration`` means a string like "90s", "10m", "1h30m", "3d", "1w";
    ``check`` gets the typed value and raises ValueError (its message is the problem) to refuse it;
    ``allowed`` replaces the generated description of what is allowed.
    """
    rule = Setting(help=help, min=min, max=max, choices=None if choices is None else tuple(choices),
                   pattern=pattern, duration=duration, check=check, allowed=allowed)
    if pattern is not None:
        re.compile(pattern)  # a broken pattern is a bug in the schema: fail at import, not at load
    return dataclasses.field(default=default, metadata={_META_KEY: rule})


def parse_duration(text: str) -> int:
    """Seconds in "90s", "10m", "1h30m", "3d" or "1w"; ValueError for anything else."""
    if not isinstance(text, str) or not _DURATION_RE.fullmatch(text):
        raise ValueError(f"not a duration: {text!r} (use a number and a unit s, m, h, d or w, e.g. 10m)")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART_RE.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest duration string for whole `seconds` ("1d", "90s"); fractions as plain seconds ("0.5s")."""
    if seconds != int(seconds) or seconds <= 0:
        return f"{seconds:g}s"
    whole = int(seconds)
    for unit in ("w", "d", "h", "m"):
        if whole % _UNIT_SECONDS[unit] == 0:
            return f"{whole // _UNIT_SECONDS[unit]}{unit}"
    return f"{whole}s"


def check_keys(data: Mapping[str, object], known: Iterable[str], *, file: str | Path, section: str = "",
               what: str = "key") -> None:
    """Refuse the first key of `data` not in `known`, suggesting the closest known one (a typo is the usual cause)."""
    names = list(known)
    for key in data:
        if key not in names:
            raise SettingsError(file, _join(section, key), data[key], f"unknown {what}{_did_you_mean(key, names)}",
                                ", ".join(names) if names else "none")


def load_table(schema: type[T], data: object, *, file: str | Path, section: str) -> T:
    """`data` (a parsed TOML table) checked against the dataclass `schema`; SettingsError on the first problem."""
    if not isinstance(data, Mapping):
        raise SettingsError(file, section, data, "not a table", f"a [{section}] table")
    fields = _schema_fields(schema)
    check_keys(data, fields, file=file, section=section)
    values: dict[str, object] = {}
    for name, (kind, rule, has_default) in fields.items():
        key = _join(section, name)
        if name not in data:
            if not has_default:
                raise SettingsError(file, key, MISSING, "required", _allowed(kind, rule))
            continue
        values[name] = _check_value(data[name], kind, rule, file=file, key=key)
    return schema(**values)


def describe(schema: type[Any]) -> list[tuple[str, str, object, str]]:
    """(key, what is allowed, default, help) for every field of `schema`, in declaration order: for docs and samples."""
    rules = _schema_fields(schema)
    return [(f.name, _allowed(rules[f.name][0], rules[f.name][1]), f.default, rules[f.name][1].help)
            for f in dataclasses.fields(schema)]


def sample_table(schema: type[Any], section: str | None, *, examples: Mapping[str, str] | None = None) -> list[str]:
    """TOML lines for a sample config: each option's help and rule as a comment, then ``key = default``.

    An option whose default is None is shown commented out with its TOML text from `examples` (required then),
    so a sample built from the schema can never list an option that does not exist or miss one that does.
    """
    lines = [] if section is None else [f"[{section}]"]
    for key, allowed, default, help_text in describe(schema):
        lines.append(f"# {help_text}. Allowed: {allowed}.")
        if default is None or default is dataclasses.MISSING:
            if examples is None or key not in examples:
                raise TypeError(f"{schema.__name__}.{key} has no default: give sample_table an example for it")
            lines.append(f"# {key} = {examples[key]}")
        else:
            lines.append(f"{key} = {_toml(default)}")
    return lines


# ---------------------------------------------------------------------------------------------- internals


def _schema_fields(schema: type[Any]) -> dict[str, tuple[Any, Setting, bool]]:
    """name -> (resolved type, rule, has a default) for every field; a field without setting() is a schema bug."""
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass schema")
    hints = typing.get_type_hints(schema)
    out: dict[str, tuple[Any, Setting, bool]] = {}
    for f in dataclasses.fields(schema):
        rule = f.metadata.get(_META_KEY)
        if not isinstance(rule, Setting):
            raise TypeError(f"{schema.__name__}.{f.name} is not declared with setting()")
        base, _ = _base_type(hints[f.name])  # an unsupported annotation fails here, on first use of the schema
        if rule.duration and base is not str:
            raise TypeError(f"{schema.__name__}.{f.name}: a duration is written as a string like 10m")
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        out[f.name] = (hints[f.name], rule, has_default)
    return out


def _base_type(kind: Any) -> tuple[type, bool]:
    """(the one concrete type, whether None is allowed) of an annotation like ``int`` or ``str | None``."""
    optional = False
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        members = [m for m in typing.get_args(kind) if m is not type(None)]
        optional = len(members) < len(typing.get_args(kind))
        if len(members) != 1:
            raise TypeError(f"a setting has one type (optionally | None), not {kind!r}")
        kind = members[0]
    if kind not in (str, int, float, bool):
        raise TypeError(f"a setting is str, int, float or bool, not {kind!r}")
    return kind, optional


_TYPE_WORDS: Final[Mapping[type, str]] = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _check_value(value: object, kind: Any, rule: Setting, *, file: str | Path, key: str) -> object:
    """The typed value, or SettingsError naming what is wrong with it."""
    base, _ = _base_type(kind)  # None never comes from TOML (it has no null): an optional key is left out instead

    def refuse(problem: str) -> SettingsError:
        return SettingsError(file, key, value, problem, _allowed(kind, rule))

    # bool is an int subclass in Python, so `true` would pass as 1: refuse it explicitly.
    if isinstance(value, bool) and base is not bool:
        raise refuse(f"true/false is not {_TYPE_WORDS[base]}")
    if base is float and isinstance(value, int):
        value = float(value)  # TOML's `5` for a float option means 5.0
    if not isinstance(value, base):
        raise refuse(f"not {_TYPE_WORDS[base]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise refuse("not a finite number")
    if rule.choices is not None and value not in rule.choices:
        raise refuse(f"not one of the choices{_did_you_mean(value, rule.choices)}")
    if rule.pattern is not None and isinstance(value, str) and not re.fullmatch(rule.pattern, value):
        raise refuse("does not have the allowed form")
    measure: float | None = None
    if rule.duration:
        try:
            measure = parse_duration(value) if isinstance(value, str) else None
        except ValueError:
            raise refuse("not a duration") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        measure = value
    elif isinstance(value, str):
        measure = len(value)
    if measure is not None:
        if rule.min is not None and measure < rule.min:
            raise refuse("too short" if rule.duration or isinstance(value, str) else "too small")
        if rule.max is not None and measure > rule.max:
            raise refuse("too long" if rule.duration or isinstance(value, str) else "too large")
    if rule.check is not None:
        try:
            rule.check(value)
        except ValueError as exc:
            raise refuse(str(exc) or "refused") from None
    return value


def _allowed(kind: Any, rule: Setting) -> str:
    """What a person may write for this setting, in words."""
    if rule.allowed is not None:
        return rule.allowed
    base, _ = _base_type(kind)
    if rule.choices is not None:
        return "one of " + ", ".join(_toml(c) for c in rule.choices)
    if rule.duration:
        low = format_duration(rule.min) if rule.min is not None else None
        high = format_duration(rule.max) if rule.max is not None else None
        return "a duration such as 90s, 10m, 2h, 3d, 1w" + _range(low, high)
    what = _TYPE_WORDS[base]
    if base is str:
        low = f"{rule.min:g}" if rule.min is not None else None
        high = f"{rule.max:g}" if rule.max is not None else None
        bounds = _range(low, high)
        return what + (bounds.replace("from", "of", 1) + " characters" if bounds else "")
    if base is int:  # whole numbers in full: 10000000, not 1e+07
        return what + _range(str(int(rule.min)) if rule.min is not None else None,
                             str(int(rule.max)) if rule.max is not None else None)
    if base in (int, float):
        return what + _range(f"{rule.min:g}" if rule.min is not None else None,
                             f"{rule.max:g}" if rule.max is not None else None)
    return what


def _range(low: str | None, high: str | None) -> str:
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" of at least {low}"
    if high is not None:
        return f" of at most {high}"
    return ""


def _did_you_mean(word: object, candidates: Iterable[object]) -> str:
    import difflib  # only on the error path: client start-up does not pay for it

    # Case-blind, so "DEBUG" or "Radio" still finds its key.
    names = {str(c).lower(): str(c) for c in candidates}
    close = difflib.get_close_matches(str(word).lower(), list(names), n=1, cutoff=0.6)
    return f"; did you mean {names[close[0]]}?" if close else ""


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _toml(value: object) -> str:
    """A value as it is written in TOML (strings quoted, booleans lower case), for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _shown(key: str, value: object) -> str:
    if value is MISSING:
        return f"{key} (missing)"
    if isinstance(value, Mapping):
        return f"{key} (a table)"
    if isinstance(value, list):
        return f"{key} (an array)"
    text = _toml(value)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return f"{key} = {text}"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # everything str.splitlines() breaks at


def _one_line(text: str) -> str:
    """Escape control characters (a newline in a path or a value must not break the one-line message)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)

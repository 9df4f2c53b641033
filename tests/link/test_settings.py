"""dkey_link.settings: every rule, with the bad value it stops and the honest value it lets through."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dkey_link.settings import (
    MISSING,
    SettingsError,
    check_keys,
    describe,
    format_duration,
    load_table,
    parse_duration,
    sample_table,
    setting,
)

FILE = Path("/etc/dkey/config.toml")


def _no_slash(value: str) -> None:
    if "/" in value:
        raise ValueError("contains '/'")


@dataclass(frozen=True, slots=True)
class Demo:
    """A schema using every rule once."""

    count: int = setting(5, help="an integer with bounds", min=1, max=20)
    ratio: float = setting(0.5, help="a float with bounds", min=0.1, max=10)
    flag: bool = setting(False, help="a boolean")
    level: str = setting("info", help="a choice", choices=("debug", "info", "warning", "error"))
    code: str = setting("ab", help="a pattern", pattern=r"[a-z]+", min=1, max=8)
    ttl: str = setting("10m", help="a duration", duration=True, min=60, max=86_400)
    path: str | None = setting(None, help="optional, custom check", check=_no_slash, allowed="a name without '/'")


@dataclass(frozen=True, slots=True)
class Needs:
    """A schema with a required key."""

    host: str = setting(help="required")


def load(data: object, schema: type = Demo) -> object:
    return load_table(schema, data, file=FILE, section="demo")


def refused(data: object, schema: type = Demo) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        load(data, schema)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{FILE}: ")
    assert "(allowed: " in msg
    return info.value


# ---------------------------------------------------------------------------------------------- honest values


def test_empty_table_gives_the_defaults() -> None:
    assert load({}) == Demo()


def test_every_honest_value_is_let_through_typed() -> None:
    got = load({"count": 20, "ratio": 3, "flag": True, "level": "debug", "code": "abcdefgh", "ttl": "1d",
                "path": "a-b"})
    assert got == Demo(count=20, ratio=3.0, flag=True, level="debug", code="abcdefgh", ttl="1d", path="a-b")
    assert isinstance(got.ratio, float)  # type: ignore[attr-defined]


def test_bounds_are_inclusive() -> None:
    assert load({"count": 1, "ratio": 0.1, "ttl": "1m"}) == Demo(count=1, ratio=0.1, ttl="1m")
    assert load({"count": 20, "ratio": 10.0, "ttl": "24h"}) == Demo(count=20, ratio=10.0, ttl="24h")


def test_defaults_obey_their_own_rules() -> None:
    from dataclasses import asdict

    assert load({k: v for k, v in asdict(Demo()).items() if v is not None}) == Demo()


# ---------------------------------------------------------------------------------------------- bad values


def test_the_message_names_file_key_value_and_what_is_allowed() -> None:
    err = refused({"count": "five"})
    assert str(err) == (f'{FILE}: demo.count = "five": not an integer (allowed: an integer from 1 to 20)')
    assert (err.file, err.key, err.value) == (str(FILE), "demo.count", "five")
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(("data", "problem"), [
    ({"count": 0}, "too small"),
    ({"count": 21}, "too large"),
    ({"count": 1_000_000}, "too large"),
    ({"ratio": 0.0}, "too small"),
    ({"ratio": 10.5}, "too large"),
    ({"code": ""}, "does not have the allowed form"),
    ({"code": "abcdefghi"}, "too long"),
])
def test_out_of_bounds_is_refused(data: dict[str, object], problem: str) -> None:
    assert refused(data).problem == problem


@pytest.mark.parametrize("data", [
    {"count": True},  # bool is an int subclass in Python; not in a config
    {"ratio": False},
    {"count": 5.0},  # an integer option does not take a float, even a whole one
    {"count": "5"},
    {"ratio": "0.5"},
    {"flag": 1},
    {"flag": "yes"},
    {"level": 1},
    {"path": ["a"]},
    {"ttl": 600},  # a duration is written with its unit
])
def test_wrong_types_are_refused(data: dict[str, object]) -> None:
    assert refused(data).problem.startswith(("not ", "true/false is not"))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused(value: float) -> None:
    assert refused({"ratio": value}).problem == "not a finite number"


def test_choices_suggest_the_closest() -> None:
    err = refused({"level": "verbose"})
    assert err.allowed == 'one of "debug", "info", "warning", "error"'
    assert "did you mean" not in err.problem
    assert refused({"level": "warn"}).problem.endswith("did you mean warning?")


def test_pattern_is_a_full_match() -> None:
    assert refused({"code": "ab1"}).problem == "does not have the allowed form"
    assert refused({"code": "1ab"}).problem == "does not have the allowed form"


@pytest.mark.parametrize(("value", "problem"), [
    ("100w", "too long"), ("2d", "too long"), ("59s", "too short"), ("fast", "not a duration"),
    ("10", "not a duration"), ("10 m", "not a duration"), ("-5m", "not a duration"), ("", "not a duration"),
])
def test_durations_are_parsed_and_bounded(value: str, problem: str) -> None:
    err = refused({"ttl": value})
    assert err.problem == problem
    assert err.allowed == "a duration such as 90s, 10m, 2h, 3d, 1w from 1m to 1d"


def test_custom_check_refuses_with_its_reason() -> None:
    err = refused({"path": "a/b"})
    assert err.problem == "contains '/'" and err.allowed == "a name without '/'"
    assert load({"path": "ab"}) == Demo(path="ab")


def test_unknown_key_is_refused_with_a_suggestion() -> None:
    err = refused({"cuont": 3})
    assert err.key == "demo.cuont" and err.problem == "unknown key; did you mean count?"
    assert err.allowed == "count, ratio, flag, level, code, ttl, path"
    assert "did you mean" not in refused({"zzzzzz": 1}).problem


def test_required_key_missing() -> None:
    err = refused({}, Needs)
    assert err.value is MISSING and err.problem == "required"
    assert str(err) == f"{FILE}: demo.host (missing): required (allowed: a string)"
    assert load({"host": "x"}, Needs) == Needs(host="x")


@pytest.mark.parametrize("data", [5, "x", [1, 2]])
def test_a_table_that_is_not_a_table(data: object) -> None:
    assert refused(data).problem == "not a table"


def test_the_message_stays_on_one_line_and_short() -> None:
    err = refused({"code": "a\nb" + "x" * 500})
    text = str(err)
    assert "\n" not in text and len(text) < 250
    weird = SettingsError("/tmp/a\nb.toml", "k", "v", "bad", "good")
    assert "\n" not in str(weird)


def test_check_keys_for_tables_and_top_level_keys() -> None:
    check_keys({"server": {}}, ["server", "pairing"], file=FILE)
    with pytest.raises(SettingsError) as info:
        check_keys({"sever": {}}, ["server", "pairing"], file=FILE, what="table")
    assert str(info.value) == (f"{FILE}: sever (a table): unknown table; did you mean server? "
                               "(allowed: server, pairing)")


def test_parse_and_format_duration() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1w") == 604_800
    for bad in ("", "1", "1y", "1H", " 1m", "1.5h", "m"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)
    assert [format_duration(s) for s in (60, 90, 86_400, 604_800, 0.5, 3600)] == ["1m", "90s", "1d", "1w",
                                                                                   "0.5s", "1h"]


def test_describe_lists_every_field_in_order() -> None:
    rows = describe(Demo)
    assert [r[0] for r in rows] == ["count", "ratio", "flag", "level", "code", "ttl", "path"]
    assert rows[0] == ("count", "an integer from 1 to 20", 5, "an integer with bounds")


def test_schema_bugs_are_type_errors() -> None:
    @dataclass
    class Plain:
        x: int = 1

    with pytest.raises(TypeError, match="setting"):
        load_table(Plain, {}, file=FILE, section="s")

    @dataclass
    class BadDuration:
        x: int = setting(1, help="h", duration=True)

    with pytest.raises(TypeError, match="duration"):
        load_table(BadDuration, {}, file=FILE, section="s")

    @dataclass
    class BadType:
        x: list[int] = setting(None, help="h")

    with pytest.raises(TypeError, match="str, int, float or bool"):
        load_table(BadType, {}, file=FILE, section="s")


def test_suggestions_are_case_blind() -> None:
    assert refused({"level": "DEBUG"}).problem.endswith("did you mean debug?")
    assert refused({"Count": 3}).problem.endswith("did you mean count?")


def test_sample_table_is_built_from_the_schema() -> None:
    import tomllib

    lines = sample_table(Demo, "demo", examples={"path": '"a-b"'})
    assert lines[:3] == ["[demo]", "# an integer with bounds. Allowed: an integer from 1 to 20.", "count = 5"]
    assert "# path = \"a-b\"" in lines
    parsed = tomllib.loads("\n".join(lines))["demo"]
    assert load(parsed) == Demo()
    with pytest.raises(TypeError, match="example"):
        sample_table(Demo, "demo")


@given(st.text(max_size=200))
def test_any_string_is_either_taken_or_refused_on_one_line(text: str) -> None:
    for key in ("code", "level", "ttl", "path", "count"):
        try:
            load({key: text})
        except SettingsError as err:
            assert len(str(err).splitlines()) == 1

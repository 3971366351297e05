"""mlx_serve.durations: keep_alive / timeout durations and memory sizes, as tables."""

from __future__ import annotations

import math

import pytest

from mlx_serve.durations import (
    FOREVER,
    DurationError,
    format_duration,
    format_size,
    parse_budget,
    parse_duration,
    parse_keep_alive,
    parse_size,
)

GB = 1000**3
GiB = 1024**3

# --- parse_duration ---------------------------------------------------------------------------

DURATIONS = [
    # (input, seconds)
    (0, 0.0),
    (30, 30.0),
    (1.5, 1.5),
    (-1, -1.0),
    ("300", 300.0),
    (" 300 ", 300.0),
    ("0", 0.0),
    ("-1", -1.0),
    ("+5", 5.0),
    ("2.5", 2.5),
    (".5", 0.5),
    ("1e3", 1000.0),
    ("30s", 30.0),
    ("10m", 600.0),
    ("1h", 3600.0),
    ("1h30m", 5400.0),
    ("1.5h", 5400.0),
    ("2h45m30s", 2 * 3600 + 45 * 60 + 30.0),
    ("1d", 86400.0),
    ("500ms", 0.5),
    ("250us", 250e-6),
    ("250µs", 250e-6),
    ("100ns", 100e-9),
    ("-1m", -60.0),
    ("-5s", -5.0),
    ("0s", 0.0),
]


@pytest.mark.parametrize(("value", "seconds"), DURATIONS, ids=[repr(v) for v, _ in DURATIONS])
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)
    assert isinstance(parse_duration(value), float)


INVALID_DURATIONS = [
    "banana", "", "   ", "10x", "1h30", "h", "m10", "10 m", "1h 30m", "-", "+", "--5", "+-1", "- 5", "1_000",
    "nan", "inf", "-inf", "infinity", "1e999", "10M", "1H",
    None, True, False, [], {}, [10], {"s": 10}, float("nan"), float("inf"), float("-inf"),
]


@pytest.mark.parametrize("value", INVALID_DURATIONS, ids=[repr(v) for v in INVALID_DURATIONS])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(DurationError):
        parse_duration(value)


def test_duration_error_is_a_value_error_and_quotes_the_input() -> None:
    with pytest.raises(ValueError, match="banana"):
        parse_duration("banana")


# --- parse_keep_alive: Ollama semantics --------------------------------------------------------

KEEP_ALIVE = [
    (0, 0.0),
    ("0", 0.0),
    ("0s", 0.0),
    (300, 300.0),
    ("300", 300.0),
    ("30s", 30.0),
    ("10m", 600.0),
    ("1h30m", 5400.0),
    ("1.5h", 5400.0),
    (-1, FOREVER),
    (-1.5, FOREVER),
    ("-1", FOREVER),
    ("-1m", FOREVER),
    ("-0.001s", FOREVER),
]


@pytest.mark.parametrize(("value", "seconds"), KEEP_ALIVE, ids=[repr(v) for v, _ in KEEP_ALIVE])
def test_parse_keep_alive(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


def test_keep_alive_forever_is_infinite() -> None:
    assert FOREVER == math.inf
    assert math.isinf(parse_keep_alive(-1)) and parse_keep_alive(-1) > 0


@pytest.mark.parametrize("value", ["banana", "", "10x", "1h30", None, True, [], {}, "nan", float("inf"),
                                   float("nan"), "--1"],
                         ids=["banana", "empty", "10x", "1h30", "None", "True", "list", "dict", "nan-str",
                              "inf", "nan", "double-sign"])
def test_parse_keep_alive_rejects(value: object) -> None:
    with pytest.raises(DurationError):
        parse_keep_alive(value)


# --- format_duration ---------------------------------------------------------------------------

FORMATS = [
    (FOREVER, "forever"),
    (0, "0s"),
    (0.5, "0.5s"),
    (30, "30s"),
    (59, "59s"),
    (60, "1m"),
    (90, "90s"),
    (600, "10m"),
    (3600, "1h"),
    (5400, "90m"),
    (7200, "2h"),
    (86400, "24h"),
]


@pytest.mark.parametrize(("seconds", "text"), FORMATS, ids=[t for _, t in FORMATS])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0, 30, 60, 600, 3600, 5400, 86400])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


# --- parse_size --------------------------------------------------------------------------------

SIZES = [
    (0, 0),
    (1024, 1024),
    (1024.9, 1024),
    ("1024", 1024),
    ("512B", 512),
    ("512MB", 512 * 1000**2),
    ("512mb", 512 * 1000**2),
    ("512 MB", 512 * 1000**2),
    ("24GB", 24 * GB),
    ("24G", 24 * GB),
    ("24gb", 24 * GB),
    ("1.5GiB", int(1.5 * GiB)),
    ("1.5Gi", int(1.5 * GiB)),
    ("2KiB", 2048),
    ("2KB", 2000),
    ("1MiB", 1024**2),
    ("1TB", 1000**4),
    ("1TiB", 1024**4),
    (" 8GB ", 8 * GB),
]


@pytest.mark.parametrize(("value", "size"), SIZES, ids=[repr(v) for v, _ in SIZES])
def test_parse_size(value: object, size: int) -> None:
    result = parse_size(value)
    assert result == size
    assert isinstance(result, int)


INVALID_SIZES = ["", "GB", "lots", "-5GB", "5XB", "5 G B", "1.2.3GB", "24GBs", "nan", "inf", "75%",
                 -1, -1.0, float("nan"), float("inf"), None, True, False, [], {}]


@pytest.mark.parametrize("value", INVALID_SIZES, ids=[repr(v) for v in INVALID_SIZES])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


# --- parse_budget ------------------------------------------------------------------------------

PHYSICAL = 64 * GB

BUDGETS = [
    ("75%", PHYSICAL, 48 * GB),
    (" 75% ", PHYSICAL, 48 * GB),
    ("100%", PHYSICAL, PHYSICAL),
    ("50%", 16 * GiB, 8 * GiB),
    ("12.5%", 8 * GB, 1 * GB),
    ("24GB", PHYSICAL, 24 * GB),
    ("1.5GiB", PHYSICAL, int(1.5 * GiB)),
    (1024, PHYSICAL, 1024),
    ("200GB", PHYSICAL, 200 * GB),  # an absolute size is taken as written, even above physical memory
]


@pytest.mark.parametrize(("value", "physical", "budget"), BUDGETS, ids=[repr(v) for v, _, _ in BUDGETS])
def test_parse_budget(value: object, physical: int, budget: int) -> None:
    assert parse_budget(value, physical) == budget


@pytest.mark.parametrize("value", ["0%", "150%", "100.1%", "-5%", "%", "abc%", "nan%", "lots", "", None, True],
                         ids=["0%", "150%", "100.1%", "-5%", "bare-%", "abc%", "nan%", "lots", "empty", "None",
                              "True"])
def test_parse_budget_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_budget(value, PHYSICAL)


# --- format_size -------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (999, "999 B"), (1500, "1.5 KB"), (512 * 1000**2, "512.0 MB"),
                                         (24 * GB, "24.0 GB")])
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text

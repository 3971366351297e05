"""Parsing of durations (``keep_alive``, timeouts) and memory sizes (``24GB``, ``75%``).

Pure functions: every value users write in models.yaml or send as ``keep_alive`` passes here.
"""

from __future__ import annotations

import math
import re

FOREVER = math.inf
"""A keep_alive of FOREVER pins the model: it stays loaded until explicitly unloaded."""

MAX_KEEP_ALIVE = (2**63 - 1) / 1e9
"""The longest finite keep_alive, Go's (and so Ollama's) longest duration. Longer ones are refused:
an expiry thousands of years ahead is past what dates can express, and /api/ps shows the date."""

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")  # a bare number, one sign at most


class DurationError(ValueError):
    pass


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a Go-style duration string (``"30s"``, ``"1h30m"``, ``"1.5h"``).

    Negative values are returned as they are; callers decide what a negative means.
    """
    if isinstance(value, bool) or value is None:
        raise DurationError(f"expected a number of seconds or a duration like '10m', got {value!r}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float (JSON allows 10**400)
            raise DurationError("expected a finite duration, got a number too large to use") from None
        if math.isnan(seconds) or math.isinf(seconds):
            raise DurationError(f"expected a finite duration, got {value!r}")
        return seconds
    if not isinstance(value, str):
        raise DurationError(f"expected a number of seconds or a duration like '10m', got {value!r}")
    text = value.strip()
    if not text:
        raise DurationError("expected a duration like '10m', got an empty string")
    sign = 1.0
    if text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if _NUMBER.fullmatch(text):  # a bare number in a string: seconds, as Ollama reads "300"
        number = float(text)
        if math.isinf(number):  # "1e999"
            raise DurationError(f"expected a finite duration, got {value!r}")
        return sign * number
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise DurationError(f"invalid duration {value!r}: use seconds (300) or units like '30s', '10m', '1h30m'")
    if math.isinf(total):  # "1000…000s" with hundreds of digits
        raise DurationError(f"expected a finite duration, got {value!r}")
    return sign * total


def parse_keep_alive(value: object) -> float:
    """keep_alive as Ollama defines it: seconds to stay loaded once idle.

    A negative value means forever (:data:`FOREVER`); ``0`` means unload as soon as idle.
    """
    seconds = parse_duration(value)
    if seconds > MAX_KEEP_ALIVE:
        raise DurationError(f"{value!r} is longer than the longest keep_alive ({MAX_KEEP_ALIVE / 3600:.0f}h, "
                            f"about 292 years); use -1 to keep the model loaded until it is unloaded")
    return FOREVER if seconds < 0 else seconds


def format_duration(seconds: float) -> str:
    if seconds == FOREVER:
        return "forever"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "mi": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
               "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4}


def parse_size(value: object) -> int:
    """Bytes from an int or a string like ``"512MB"``, ``"24GB"``, ``"1.5GiB"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '24GB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value!r}")
        return value
    if isinstance(value, float) and value >= 0 and not math.isinf(value):
        return int(value)
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()])
    raise ValueError(f"expected a size like '512MB' or '24GB', got {value!r}")


def parse_budget(value: object, physical_bytes: int) -> int:
    """The memory budget: a size, or a share of physical memory (``"75%"``)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = float(value.strip()[:-1])
        except ValueError:
            raise ValueError(f"expected a share like '75%', got {value!r}") from None
        if not 0 < share <= 100:
            raise ValueError(f"a share of memory must be between 0% and 100%, got {value!r}")
        return int(physical_bytes * share / 100)
    return parse_size(value)


def format_size(n: float) -> str:
    for unit, scale in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"

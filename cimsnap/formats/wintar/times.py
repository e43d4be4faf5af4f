"""Windows FILETIME values and their PAX text form, as Windows layer tars carry them.

A FILETIME counts 100-nanosecond intervals since 1601-01-01 00:00 UTC (MS-DTYP 2.3.3).  Layer tars
store times as POSIX.1-2001 PAX time strings (``"<seconds>[.<fraction>]"`` since the Unix epoch):
``mtime``, ``atime``, ``ctime`` and the libarchive record ``LIBARCHIVE.creationtime``.  The
conversions follow go-winio's backuptar and Go's archive/tar (parsePAXTime / formatPAXTime,
windows.NsecToFiletime / Filetime.Nanoseconds), so a FILETIME written here is read back exactly
by hcsshim and vice versa.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# 100-ns intervals between 1601-01-01 and 1970-01-01 (MS-DTYP 2.3.3; x/sys/windows uses the same).
FILETIME_UNIX_EPOCH = 116_444_736_000_000_000
# FILE_BASIC_INFORMATION stores times as signed 64-bit LARGE_INTEGERs.
FILETIME_MAX = (1 << 63) - 1
NS_PER_TICK = 100
NS_PER_SECOND = 1_000_000_000

_FILETIME_ORIGIN = datetime(1601, 1, 1, tzinfo=UTC)


class TimeRangeError(ValueError):
    """A time cannot be represented as a FILETIME."""


def filetime_from_unix_ns(ns: int) -> int:
    """FILETIME of Unix nanoseconds, truncated toward zero like windows.NsecToFiletime."""
    ticks = abs(ns) // NS_PER_TICK
    ft = (ticks if ns >= 0 else -ticks) + FILETIME_UNIX_EPOCH
    if not 0 <= ft <= FILETIME_MAX:
        raise TimeRangeError(f"time {ns} ns since 1970 is outside the FILETIME range")
    return ft


def filetime_to_unix_ns(ft: int) -> int:
    """Unix time in nanoseconds of a FILETIME (exact)."""
    return (ft - FILETIME_UNIX_EPOCH) * NS_PER_TICK


def filetime_from_datetime(value: datetime) -> int:
    """FILETIME of an aware datetime (naive datetimes are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _FILETIME_ORIGIN
    ticks = (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10
    if not 0 <= ticks <= FILETIME_MAX:
        raise TimeRangeError(f"{value.isoformat()} is outside the FILETIME range")
    return ticks


def filetime_to_datetime(ft: int) -> datetime:
    """UTC datetime of a FILETIME (microsecond precision; datetime cannot hold 100 ns)."""
    return _FILETIME_ORIGIN + timedelta(microseconds=ft // 10)


def parse_pax_time(text: str) -> int:
    """Unix nanoseconds of a PAX time string; extra fraction digits are truncated (as Go does).

    The form is ``[+-]<digits>[.<digits>]`` (ASCII digits; the fraction may be empty).
    """
    whole, _, fraction = text.partition(".")
    digits = whole[1:] if whole[:1] in ("+", "-") else whole
    checked = digits + fraction
    if not digits or not checked.isdigit() or not checked.isascii():
        raise ValueError(f"malformed PAX time {text!r}")
    # Seconds and nanoseconds as one decimal number: "-1.5" is -(1 s + 500,000,000 ns).
    try:
        return int(whole + fraction[:9].ljust(9, "0"))
    except ValueError:  # thousands of digits: far outside any FILETIME anyway
        raise ValueError(f"PAX time with {len(whole)} digits is out of range") from None


def format_pax_time(ns: int) -> str:
    """PAX time string of Unix nanoseconds, formatted exactly like Go's formatPAXTime."""
    seconds, nanos = divmod(ns, NS_PER_SECOND)
    if nanos == 0:
        return str(seconds)
    sign = ""
    if seconds < 0:
        sign = "-"
        seconds = -(seconds + 1)
        nanos = NS_PER_SECOND - nanos
    return f"{sign}{seconds}.{nanos:09d}".rstrip("0")


@dataclass(frozen=True)
class FileTimes:
    """The four times of FILE_BASIC_INFORMATION, as FILETIME integers."""

    creation: int
    last_write: int
    change: int
    last_access: int

    @classmethod
    def all_at(cls, ft: int) -> FileTimes:
        return cls(ft, ft, ft, ft)

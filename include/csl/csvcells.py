"""CSV cells a spreadsheet cannot run: text from the database (query texts, object keys, ids a
platform or a user wrote) is data, and a cell starting with ``=``, ``+``, ``-``, ``@``, a tab or
a carriage return would be read as a formula (CSV injection). Such text gets a leading ``'``,
which spreadsheets show as text; numbers are left alone."""

from __future__ import annotations

from typing import Any

__all__ = ["FORMULA_START", "cell"]

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """``value`` safe to write as one CSV cell (only text is changed)."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value

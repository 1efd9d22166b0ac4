"""Query texts read back from the database are hostile data: a small PostgreSQL lexer to show
them without their literals and to tell reads from writes.

It follows PostgreSQL's own scanner where that matters: block comments nest (``/* a /* b */ c */``),
``'…'`` strings double their quotes (``standard_conforming_strings``), ``E'…'`` strings also take
backslash escapes, ``B'…'``/``X'…'``/``N'…'``/``U&'…'`` are strings, ``$tag$…$tag$`` is a
dollar-quoted string, ``"…"`` is an identifier, ``$1`` a parameter. Nothing here decides what is
safe to *run*: the advisor plans a text through the extended protocol only (one statement), in a
read-only transaction, as a role that cannot write. This only decides what to show and what
to try.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = ["first_word", "is_ri_check", "not_costable", "redact", "tokens"]

_SPACE = " \t\n\r\f\v"
_IDENT_START = re.compile(r"[A-Za-z_\x80-\U0010ffff]")
_IDENT = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_NUMBER = re.compile(r"(?:0[xX][0-9A-Fa-f_]+|0[oO][0-7_]+|0[bB][01_]+|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)"
                     r"(?:[eE][+-]?\d+)?)")
_PARAM = re.compile(r"\$\d+")
_STRING_PREFIXES = {"e", "b", "x", "n"}


def _quoted(text: str, start: int, quote: str, *, backslash: bool = False) -> int:
    """End of a quoted token opening at ``start`` (the quote itself); an unterminated one ends the text."""
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if backslash and c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and text[i + 1] == quote:  # a doubled quote stands for one
                i += 2
                continue
            return i + 1
        i += 1
    return n


def tokens(text: str) -> Iterator[tuple[str, str]]:
    """``(kind, text)`` for every token: ``space``, ``comment``, ``string`` (every literal string,
    dollar-quoted included), ``number``, ``param``, ``ident`` (quoted identifier), ``word``
    (keyword or plain identifier) and ``op`` (anything else, one character)."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _SPACE:
            j = i + 1
            while j < n and text[j] in _SPACE:
                j += 1
            yield "space", text[i:j]
        elif text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            yield "comment", text[i:j]
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            yield "comment", text[i:j]
        elif c == "'":
            j = _quoted(text, i, "'")
            yield "string", text[i:j]
        elif c == '"':
            j = _quoted(text, i, '"')
            yield "ident", text[i:j]
        elif c == "$" and (m := _PARAM.match(text, i)):
            yield "param", m.group()
            j = m.end()
        elif c == "$" and (m := _DOLLAR_TAG.match(text, i)):
            close = text.find(m.group(), m.end())
            j = n if close < 0 else close + len(m.group())
            yield "string", text[i:j]
        elif c.isdigit() or (c == "." and i + 1 < n and text[i + 1].isdigit()):
            m = _NUMBER.match(text, i)
            j = m.end() if m and m.end() > i else i + 1
            yield "number", text[i:j]
        elif _IDENT_START.match(c):
            j = _IDENT.match(text, i + 1).end()
            word = text[i:j]
            if j < n and text[j] == "'" and word.lower() in _STRING_PREFIXES:
                j = _quoted(text, j, "'", backslash=word.lower() == "e")
                yield "string", text[i:j]
            elif word.lower() == "u" and text.startswith("&'", j):
                j = _quoted(text, j + 1, "'")
                yield "string", text[i:j]
            elif word.lower() == "u" and text.startswith('&"', j):
                j = _quoted(text, j + 1, '"')
                yield "ident", text[i:j]
            else:
                yield "word", word
        else:
            j = i + 1
            yield "op", c
        i = j


def redact(text: str | None, *, limit: int | None = None) -> str:
    """The text with every literal (string, number, dollar-quoted, bit string…) shown as ``?``
    and every comment as ``/*…*/``; whitespace runs become one space. ``$n`` parameters stay.
    An unterminated literal (a text cut by ``track_activity_query_size``) is redacted to the end."""
    out: list[str] = []
    for kind, token in tokens(text or ""):
        if kind in ("string", "number"):
            out.append("?")
        elif kind == "comment":
            out.append("/*…*/")
        elif kind == "space":
            out.append(" ")
        else:
            out.append(token)
    shown = "".join(out).strip()
    return shown[:limit] if limit else shown


def _words(text: str) -> list[str]:
    return [t.upper() for kind, t in tokens(text) if kind == "word"]


def first_word(text: str | None) -> str | None:
    """The statement's first keyword, upper-case, past comments and opening parentheses."""
    for kind, token in tokens(text or ""):
        if kind in ("space", "comment") or (kind == "op" and token == "("):
            continue
        return token.upper() if kind == "word" else None
    return None


_RI_CHECK = re.compile(r'FROM ONLY "[^"]+"\."[^"]+" x WHERE .* FOR (KEY )?SHARE OF x', re.DOTALL)
_WRITES = {"INSERT", "UPDATE", "DELETE", "MERGE", "INTO"}  # INTO: SELECT … INTO creates a table


def is_ri_check(text: str | None) -> bool:
    """One of the foreign-key checks PostgreSQL runs itself (always by primary key)."""
    return bool(_RI_CHECK.search(text or ""))


def not_costable(text: str | None) -> str | None:
    """Why the advisor does not cost this text (None: a read-only SELECT/WITH it may plan).

    Writes are not costed: ``EXPLAIN`` of an UPDATE, a DELETE, a data-modifying WITH or a
    ``SELECT … FOR UPDATE`` checks the write privilege, which the advisor's role must not have."""
    text = text or ""
    first = first_word(text)
    if first not in ("SELECT", "WITH"):
        return "not costed: write statement" if first in _WRITES else "not costed: not a SELECT/WITH statement"
    words = _words(text)
    for n, word in enumerate(words):
        if word == "FOR" and n + 1 < len(words) and words[n + 1] in ("UPDATE", "SHARE", "NO", "KEY"):
            return "not costed: locking read (FOR UPDATE/SHARE needs the write privilege)"
        if word in _WRITES:
            return "not costed: write statement"
    return None

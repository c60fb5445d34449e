r"""Text from file names made safe to show: on a terminal, in a TSV cell, in one line.

A file name can hold anything but ``/`` and NUL: terminal escape sequences (``ESC [ 2 J`` clears
the screen of whoever reads the log), bytes that are not UTF-8 (Python keeps them as lone
surrogates, which cannot be written as UTF-8 text), or a leading ``=`` that a spreadsheet opening
the table runs as a formula. :func:`printable` shows every character that is not printable as a
Python escape (``\x1b``, ``\u202e``; an undecodable byte as ``\xe9``); :func:`cell` also puts a
``'`` before a value starting with ``=``, ``+``, ``-`` or ``@`` (what spreadsheets take for a
formula; OWASP's advice for CSV injection). Both are idempotent.
"""

from __future__ import annotations

__all__ = ["FORMULA_START", "cell", "one_line", "printable"]

FORMULA_START = ("=", "+", "-", "@")
"""First characters that make a spreadsheet read a cell as a formula."""


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: object) -> str:
    r"""The text with every character that is not printable written as a Python escape.

    Control characters (``ESC``, ``BEL``, C1 controls), format characters (bidirectional
    overrides), separators other than the space and lone surrogates (the bytes of a file name
    that are not UTF-8) become ``\x1b``, ``\u202e``, ``\xe9`` …; everything else is kept.

    Args:
        text: Anything; ``str()`` of it is used.

    Returns:
        Printable text that encodes as UTF-8.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def one_line(text: object) -> str:
    """The text on one line (runs of whitespace as one space) and :func:`printable`."""
    return printable(" ".join(str(text).split()))


def cell(text: object) -> str:
    """A TSV cell: :func:`one_line`, with ``'`` before a value a spreadsheet would run.

    Args:
        text: The value.

    Returns:
        The cell's text.
    """
    value = one_line(text)
    return "'" + value if value.startswith(FORMULA_START) else value

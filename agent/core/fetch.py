"""SSRF-safe fetching of one web page as readable text: the engine behind the `web_fetch` tool.

Built on pydantic-ai's `_ssrf` module (URL parsing, the private/metadata address tables, IPv6
transition decoding, DNS resolution, connect-to-the-resolved-IP URLs, redirect resolution). It
doesn't call `safe_download` itself because Tandem needs two things it can't express:

- a per-host trust list: `safe_download` has one `allow_local` switch for the whole redirect
  chain, so trusting one local server would also trust every private address it redirects to;
- a byte cap that *truncates* an oversized page instead of failing, while still refusing
  decompression bombs.

Every hop of a redirect chain goes through the same checks, and the connection is made to the
address that was checked (the URL carries the IP, the `Host` header and TLS SNI carry the name),
so DNS can't answer differently between the check and the connect.
"""

from __future__ import annotations

import codecs
import http
import importlib
import ipaddress
import json
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import anyio
import anyio.to_thread
import httpx2
from pydantic_ai._http import create_async_httpx2_client
from pydantic_ai._ssrf import (
    ResolvedUrl,
    _content_encodings,  # pyright: ignore[reportPrivateUsage]
    _domain_key,  # pyright: ignore[reportPrivateUsage]
    build_url_with_ip,
    extract_host_and_port,
    is_cloud_metadata_ip,
    is_private_ip,
    resolve_hostname,
    resolve_redirect_url,
)
from pydantic_ai._utils import is_text_like_media_type

from tandem.agent.core.log import get_logger

# lxml ships no type information, so it is loaded as untyped modules rather than imported: a plain
# import would make strict type checking demand stubs for it.
_etree: Any = importlib.import_module('lxml.etree')
_lxml_html: Any = importlib.import_module('lxml.html')

__all__ = ['FetchError', 'Fetcher', 'HostRule', 'Page', 'PrivateHostError', 'netloc_of', 'parse_allowed_hosts']

_log = get_logger('tandem.tools.web')

USER_AGENT = 'Mozilla/5.0 (compatible; Tandem/0.1)'
_ACCEPT = 'text/html,application/xhtml+xml,application/json;q=0.9,text/plain;q=0.8,*/*;q=0.5'
# Only codings whose output can be capped while streaming; see `_read_gzip`.
_ACCEPT_ENCODING = 'identity, gzip'
# A gzip body that inflates more than this many times over is treated as a decompression bomb
# rather than a big page: real HTML and JSON compress 3-15x, a bomb of zeros ~1000x.
_MAX_GZIP_RATIO = 100
_MAX_TITLE_CHARS = 300

Kind = Literal['html', 'json', 'text']


class FetchError(Exception):
    """The fetch failed; the message says why in words the model can act on.

    Attributes:
        server_answered: Some server had already answered (a redirect, an error status, a body)
            when the fetch failed, so the message may carry server-chosen text, such as a
            redirect target's host name; callers treat it as untrusted.
    """

    server_answered: bool = False


class PrivateHostError(FetchError):
    """The URL's host is this machine or a private address, which `web.allowed_hosts` can trust."""


class _Progress:
    """How far one fetch got, for `FetchError.server_answered`."""

    server_answered = False


@dataclass(frozen=True)
class Page:
    """A fetched page, converted to text.

    Attributes:
        url: The URL the content came from, after redirects.
        kind: How the body was read: `html`, `json` or `text`.
        title: The HTML `<title>`, or `''`.
        text: The readable text, at most `max_chars` characters.
        total_chars: How long the text was before the character cap, or `None` when the
            conversion stopped early (JSON formatting stops once past the cap).
        chars_truncated: The text was cut at `max_chars`.
        bytes_truncated: The body was larger than `max_bytes` and only its start was read.
    """

    url: str
    kind: Kind
    title: str
    text: str
    total_chars: int | None
    chars_truncated: bool
    bytes_truncated: bool


@dataclass(frozen=True)
class HostRule:
    """One trusted host: its normalized name or IP, and a port, or `None` for any port."""

    host: str
    port: int | None


def parse_allowed_hosts(entries: Iterable[str], *, strict: bool = True) -> frozenset[HostRule]:
    """Parse trusted-host entries: `host`, `host:port`, `1.2.3.4:80`, `[::1]:8080` or a bare `::1`.

    Args:
        entries: The entries, e.g. from the `web.allowed_hosts` setting.
        strict: Raise on a malformed entry; otherwise log and skip it.

    Raises:
        ValueError: An entry isn't a host with an optional port (only when `strict`).
    """
    rules: set[HostRule] = set()
    for entry in entries:
        raw = entry.strip()
        if not raw:
            continue
        try:
            rules.add(_parse_host_rule(raw))
        except ValueError as error:
            if strict:
                raise
            _log.warning('web.allowed_host_ignored', entry=raw, error=str(error))
    return frozenset(rules)


def _parse_host_rule(raw: str) -> HostRule:
    if _as_ip(raw) is not None:  # a bare IPv6 literal has colons that urlsplit would misread
        return HostRule(_host_key(raw), None)
    parts = urlsplit(f'//{raw}')
    host, port = parts.hostname, parts.port  # .port raises ValueError for a bad port
    if not host or parts.path or parts.query or parts.username is not None:
        raise ValueError('expected host or host:port')
    return HostRule(_host_key(host), port)


def _as_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip('[]'))
    except ValueError:
        return None


def _host_key(host: str) -> str:
    """The form hosts are compared in: canonical IP text, or pydantic-ai's IDNA/case/dot-folded name."""
    ip = _as_ip(host)
    return str(ip) if ip is not None else _domain_key(host)


# The WHATWG URL parser (what browsers and many servers use) reads a host whose last label is a
# number as an IPv4 address: `2130706433`, `0x7f000001`, `127.1` and `0177.0.0.1` all mean
# 127.0.0.1. `ipaddress` only accepts the dotted-quad form, so refuse the others outright.
_NUMERIC_LABEL = re.compile(r'(?:0x[0-9a-f]*|[0-9]+)', re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class Fetcher:
    """Fetches URLs with SSRF protection, size caps and timeouts.

    Attributes:
        allowed_hosts: Hosts trusted even though they resolve to private or loopback
            addresses (cloud metadata addresses stay blocked). Empty by default.
        timeout: Seconds for the whole fetch: DNS, connect, redirects and body.
        connect_timeout: Seconds to establish each connection.
        max_bytes: Most body bytes read (after gzip decoding); a larger page is cut here.
        max_chars: Most characters of text returned.
        max_redirects: Most redirects followed.
    """

    allowed_hosts: frozenset[HostRule] = frozenset()
    timeout: float = 15.0
    connect_timeout: float = 5.0
    max_bytes: int = 2_000_000
    max_chars: int = 20_000
    max_redirects: int = 5

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError('timeouts must be positive')
        if self.max_bytes < 1 or self.max_chars < 1 or self.max_redirects < 0:
            raise ValueError('max_bytes and max_chars must be positive and max_redirects non-negative')

    async def fetch(self, url: str, *, extra_allowed_hosts: frozenset[HostRule] = frozenset()) -> Page:
        """Fetch `url` and convert the body to text.

        Args:
            url: An absolute http or https URL.
            extra_allowed_hosts: More trusted hosts for this call, e.g. from the settings.

        Raises:
            FetchError: Anything that went wrong, with a message for the model.
        """
        trusted = self.allowed_hosts | extra_allowed_hosts
        progress = _Progress()
        try:
            try:
                with anyio.fail_after(self.timeout):
                    return await self._fetch(url.strip(), trusted, progress)
            except TimeoutError:
                raise FetchError(f'timed out after {self.timeout:g}s (the server is too slow or unreachable)') from None
            except httpx2.TimeoutException:
                raise FetchError(f'timed out connecting to or reading from {netloc_of(url)}') from None
            except httpx2.ConnectError as error:
                raise FetchError(f'could not connect to {netloc_of(url)} ({_reason(error)})') from None
            except httpx2.InvalidURL:
                raise FetchError(f'invalid URL {url[:200]!r}') from None
            except httpx2.HTTPError as error:
                raise FetchError(f'network error talking to {netloc_of(url)} ({type(error).__name__})') from None
        except FetchError as error:
            error.server_answered = progress.server_answered
            raise

    async def _fetch(self, url: str, trusted: frozenset[HostRule], progress: _Progress) -> Page:
        async with create_async_httpx2_client(
            timeout=httpx2.Timeout(self.timeout, connect=self.connect_timeout)
        ) as client:
            response, final_url = await self._open(client, url, trusted, progress)
            try:
                kind = _kind_of(response)
                body, bytes_truncated = await _read_capped(response, self.max_bytes)
            finally:
                await response.aclose()
        charset = response.charset_encoding
        # Parsing is CPU-bound and proportional to the (capped) body; keep it off the event loop.
        return await anyio.to_thread.run_sync(
            lambda: self._convert(body, kind, charset, final_url, bytes_truncated=bytes_truncated),
            abandon_on_cancel=True,  # so the overall timeout still applies
        )

    async def _open(
        self, client: httpx2.AsyncClient, url: str, trusted: frozenset[HostRule], progress: _Progress
    ) -> tuple[httpx2.Response, str]:
        current = url
        for _ in range(self.max_redirects + 1):
            resolved = await _check_and_resolve(current, trusted)
            response = await client.send(_build_request(client, resolved), stream=True, follow_redirects=False)
            progress.server_answered = True
            client.cookies.clear()  # cookies would be filed under the IP; nothing here needs them
            if not response.is_redirect:
                if response.status_code >= 400:
                    await response.aclose()
                    raise FetchError(f'{current} answered HTTP {response.status_code} {_phrase(response.status_code)}')
                return response, current
            location = response.headers.get('location', '')
            await response.aclose()
            if not location:
                raise FetchError(f'{current} redirected without saying where to (no Location header)')
            current = resolve_redirect_url(current, location)
        raise FetchError(f'too many redirects (more than {self.max_redirects}) starting at {url}')

    def _convert(self, body: bytes, kind: Kind | None, charset: str | None, url: str, *, bytes_truncated: bool) -> Page:
        kind = kind or _sniff(body)
        title = ''
        total: int | None
        if kind == 'json':
            text, total = _format_json(body, self.max_chars)
        else:
            decoded = _decode(body, charset, sniff_meta=kind == 'html')
            if kind == 'html':
                title, text = _html_to_text(decoded, url)
            else:
                text = _clean_text(decoded)
            total = len(text)
        chars_truncated = total is None or total > self.max_chars
        return Page(
            url=url,
            kind=kind,
            title=title,
            text=text[: self.max_chars],
            total_chars=total,
            chars_truncated=chars_truncated,
            bytes_truncated=bytes_truncated,
        )


# --- URL checks -------------------------------------------------------------------------------


async def _check_and_resolve(url: str, trusted: frozenset[HostRule]) -> ResolvedUrl:
    """Refuse a URL that may reach a non-public address, before any connection; return where to connect."""
    try:
        host, path, port, is_https = extract_host_and_port(url)
    except ValueError:
        scheme = _scheme(url)
        if scheme and scheme not in ('http', 'https'):
            raise FetchError(f'blocked: {scheme}:// URLs cannot be fetched, only http:// and https://') from None
        raise FetchError(f'invalid URL {url[:200]!r}: give an absolute http:// or https:// URL') from None
    literal = _as_ip(host)
    if literal is None and _NUMERIC_LABEL.fullmatch(host.rsplit('.', 1)[-1]):
        raise FetchError(f'blocked: {host!r} is an IP address in a non-standard notation; write a host name')
    is_trusted = HostRule(_host_key(host), port) in trusted or HostRule(_host_key(host), None) in trusted
    if not is_trusted and literal is None and (host == 'localhost' or host.endswith('.localhost')):
        raise PrivateHostError(f'blocked: {host} is this machine; only public web sites can be fetched')
    try:
        ascii_host = host if literal is not None else host.encode('idna').decode('ascii')
    except UnicodeError:
        raise FetchError(f'invalid host name {host!r}') from None

    if literal is not None:
        addresses = [host]
    else:
        try:
            addresses = await resolve_hostname(ascii_host)
        except ValueError:
            raise FetchError(
                f'could not resolve host {host!r}: the name does not exist or there is no network'
            ) from None
    for address in addresses:
        where = host if host == address else f'{host} ({address})'
        # Metadata endpoints hand out cloud credentials: never, not even for a trusted host.
        if is_cloud_metadata_ip(address):
            raise FetchError(f'blocked: {where} is a cloud metadata address')
        if not is_trusted and is_private_ip(address):
            raise PrivateHostError(
                f'blocked: {where} is a private, loopback or link-local address; only public web sites can be fetched'
            )
    return ResolvedUrl(resolved_ip=addresses[0], hostname=ascii_host, port=port, is_https=is_https, path=path)


def _build_request(client: httpx2.AsyncClient, resolved: ResolvedUrl) -> httpx2.Request:
    host = f'[{resolved.hostname}]' if ':' in resolved.hostname else resolved.hostname
    if resolved.port != (443 if resolved.is_https else 80):
        host = f'{host}:{resolved.port}'
    headers = {'Host': host, 'User-Agent': USER_AGENT, 'Accept': _ACCEPT, 'Accept-Encoding': _ACCEPT_ENCODING}
    # Connect to the checked IP; TLS still verifies the certificate against the host name.
    extensions = {'sni_hostname': resolved.hostname} if resolved.is_https else {}
    return client.build_request('GET', build_url_with_ip(resolved), headers=headers, extensions=extensions)


def _scheme(url: str) -> str:
    scheme, separator, _ = url.partition(':')
    return scheme.lower() if separator and scheme.isascii() and scheme.isalpha() else ''


def netloc_of(url: str) -> str:
    """The `host:port` part of a URL for messages; never raises, unlike `urlsplit` on a bad IPv6 literal."""
    try:
        return urlsplit(url).netloc or url[:200]
    except ValueError:
        return url[:200]


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text[:200] if text else type(error).__name__


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ''


# --- body ---------------------------------------------------------------------------------------


def _kind_of(response: httpx2.Response) -> Kind | None:
    """What the declared content type says the body is, `None` to sniff it; refuses binary types."""
    media_type = response.headers.get('content-type', '').split(';', 1)[0].strip().lower()
    if not media_type:
        return None
    if media_type in ('text/html', 'application/xhtml+xml'):
        return 'html'
    if media_type == 'application/json' or media_type.endswith('+json'):
        return 'json'
    if is_text_like_media_type(media_type):
        return 'text'
    raise FetchError(f'unsupported content type {media_type!r}: only HTML, JSON and text pages can be read')


async def _read_capped(response: httpx2.Response, max_bytes: int) -> tuple[bytes, bool]:
    """Read at most `max_bytes` of decoded body; return it and whether the body was longer."""
    encodings = _content_encodings(response)
    if not encodings:
        return await _read_identity(response, max_bytes)
    if encodings in (['gzip'], ['x-gzip']):
        return await _read_gzip(response, max_bytes)
    raise FetchError(f'the server used an unsupported compression ({", ".join(encodings)})')


async def _read_identity(response: httpx2.Response, max_bytes: int) -> tuple[bytes, bool]:
    body = bytearray()
    async for chunk in response.aiter_raw():
        room = max_bytes - len(body)
        if len(chunk) > room:
            body += chunk[:room]
            return bytes(body), True  # stop reading; closing the response drops the rest unread
        body += chunk
    return bytes(body), False


async def _read_gzip(response: httpx2.Response, max_bytes: int) -> tuple[bytes, bool]:
    """Inflate a gzip body with zlib's `max_length`, so output never exceeds the cap mid-chunk.

    `consumed` counts compressed bytes actually fed to zlib (not merely received), so the
    expansion ratio is exact even when one network chunk holds a whole bomb.
    """
    body = bytearray()
    received = consumed = 0
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    try:
        async for chunk in response.aiter_raw():
            received += len(chunk)
            data = chunk
            while data:
                if inflater.eof:  # another gzip member follows (or zero padding, which gzip allows)
                    data = data.lstrip(b'\x00')
                    if not data:
                        break
                    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
                body += inflater.decompress(data, max_bytes + 1 - len(body))
                rest = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
                consumed += len(data) - len(rest)
                data = rest
                if len(body) > max_bytes:
                    if len(body) > _MAX_GZIP_RATIO * max(consumed, 1):
                        raise FetchError(
                            f'refused: the gzip-compressed response inflates more than {_MAX_GZIP_RATIO}x '
                            '(a likely decompression bomb)'
                        )
                    return bytes(body[:max_bytes]), True
            if received > max_bytes:  # incompressible data: cap the wire bytes too
                return bytes(body[:max_bytes]), True
        body += inflater.flush()
    except zlib.error:
        raise FetchError('the server sent a corrupt gzip-compressed body') from None
    if not inflater.eof and received:
        raise FetchError('the server sent an incomplete gzip-compressed body')
    return bytes(body[:max_bytes]), len(body) > max_bytes


def _sniff(body: bytes) -> Kind:
    start = body[:512].lstrip().lower()
    if start.startswith((b'<!doctype html', b'<html', b'<head', b'<body', b'<title')):
        return 'html'
    if start[:1] in (b'{', b'['):
        try:
            json.loads(body)
        except ValueError:
            return 'text'
        return 'json'
    return 'text'


_META_CHARSET = re.compile(rb'<meta[^>]+charset\s*=\s*["\']?\s*([a-zA-Z0-9_.:-]+)', re.IGNORECASE)


def _decode(body: bytes, charset: str | None, *, sniff_meta: bool) -> str:
    """Decode with the BOM, else the declared charset, else an HTML `<meta charset>`, else UTF-8."""
    for bom, encoding in (
        (codecs.BOM_UTF8, 'utf-8-sig'),
        (codecs.BOM_UTF16_LE, 'utf-16'),
        (codecs.BOM_UTF16_BE, 'utf-16'),
    ):
        if body.startswith(bom):
            return body.decode(encoding, errors='replace')
    candidates = [charset] if charset else []
    if sniff_meta and (match := _META_CHARSET.search(body[:4096])):
        candidates.append(match.group(1).decode('ascii'))
    for candidate in candidates:
        try:
            # `bytes.decode` raises LookupError for a label that names no codec or a non-text
            # codec like rot_13, so a hostile charset can only fall back to UTF-8.
            return body.decode(candidate, errors='replace')
        except LookupError:
            continue
    return body.decode('utf-8', errors='replace')


_CONTROL = re.compile(r'[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')
_MANY_NEWLINES = re.compile(r'\n{3,}')


def _clean_text(text: str) -> str:
    text = _CONTROL.sub('', text.replace('\r\n', '\n').replace('\r', '\n'))
    return _MANY_NEWLINES.sub('\n\n', text).strip()


def _format_json(body: bytes, max_chars: int) -> tuple[str, int | None]:
    """Pretty-print JSON, stopping once past `max_chars`: indentation grows with nesting depth, so
    a small, deeply nested document can format to something enormous. Returns the text and its full
    length, or `None` when formatting stopped early. Invalid JSON is returned as text."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        text = _clean_text(_decode(body, None, sniff_meta=False))
        return text, len(text)
    pieces: list[str] = []
    length = 0
    try:
        for piece in json.JSONEncoder(indent=2, ensure_ascii=False).iterencode(parsed):
            pieces.append(piece)
            length += len(piece)
            if length > max_chars:
                return ''.join(pieces), None
    except RecursionError:
        text = _clean_text(_decode(body, None, sniff_meta=False))
        return text, len(text)
    return ''.join(pieces), length


# --- HTML ------------------------------------------------------------------------------------------

# Elements whose content is never page text.
_DROPPED_TAGS = (
    'script', 'style', 'noscript', 'template', 'svg', 'math', 'canvas', 'iframe', 'object', 'embed',
    'select', 'datalist', 'head',
)  # fmt: skip
# Hidden elements are dropped too: they are a favourite place for text aimed at models, not people.
_HIDDEN_XPATH = (
    '//*[@hidden] | //*[@aria-hidden="true"] | //input[@type="hidden"]'
    " | //*[contains(translate(@style, 'DISPLAYNOEVIBTH ', 'displaynoevibth'), 'display:none')]"
    " | //*[contains(translate(@style, 'DISPLAYNOEVIBTH ', 'displaynoevibth'), 'visibility:hidden')]"
)
_PARAGRAPH_TAGS = frozenset(
    ['p', 'ul', 'ol', 'dl', 'table', 'blockquote', 'pre', 'figure', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'hr']
)
_LINE_TAGS = frozenset(
    [
        'div', 'section', 'article', 'main', 'header', 'footer', 'nav', 'aside', 'form', 'fieldset',
        'address', 'details', 'summary', 'figcaption', 'li', 'dt', 'dd', 'tr', 'br', 'caption', 'legend',
    ]
)  # fmt: skip
_WHITESPACE = re.compile(r'\s+')


def _html_to_text(markup: str, base_url: str) -> tuple[str, str]:
    """Return the page title and its visible text, lightly marked up (headings, list items, links)."""
    # lxml (libxml2) rather than `html.parser`: linear-time on hostile markup, and already installed
    # as a dependency of ddgs. Encoding to UTF-8 ourselves sidesteps lxml's refusal of `str` input
    # that carries an XML encoding declaration.
    parser = _lxml_html.HTMLParser(encoding='utf-8', remove_comments=True, remove_pis=True)
    try:
        root = _lxml_html.document_fromstring(markup.encode('utf-8', errors='replace'), parser=parser)
    except (_etree.ParserError, ValueError):
        return '', ''  # an empty or unparsable document has no text
    title_element = root.find('.//title')
    title = (
        _WHITESPACE.sub(' ', title_element.text_content()).strip()[:_MAX_TITLE_CHARS]
        if title_element is not None
        else ''
    )
    doomed: list[Any] = [*root.iter(*_DROPPED_TAGS), *root.xpath(_HIDDEN_XPATH)]
    for element in doomed:
        if element.getparent() is not None:
            element.drop_tree()  # keeps the element's tail text, which belongs to its parent
    return title, _render(root, base_url)


class _TextBuilder:
    """Joins text runs, turning requested line breaks into at most one blank line."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._breaks = 0
        self._line_start = True

    def newline(self, count: int = 1) -> None:
        self._breaks = max(self._breaks, count)

    def write(self, text: str, *, pre: bool = False) -> None:
        if not pre:
            text = _WHITESPACE.sub(' ', text)
            if not text.strip() and (self._breaks or self._line_start):
                return  # whitespace between blocks, not between words
        if not text:
            return
        if self._breaks:
            if self._parts:
                self._parts[-1] = self._parts[-1].rstrip(' ')
                self._parts.append('\n' * self._breaks)
            self._breaks = 0
            self._line_start = True
        if self._line_start and not pre:
            text = text.lstrip(' ')
        self._parts.append(text)
        self._line_start = text.endswith('\n')

    def result(self) -> str:
        return _clean_text(''.join(self._parts))


def _render(root: Any, base_url: str) -> str:
    out = _TextBuilder()
    pre_depth = 0
    list_counters: list[int | None] = []  # None for <ul>, the next number for <ol>
    open_links: dict[int, str] = {}
    for event, element in _etree.iterwalk(root, events=('start', 'end')):
        tag = element.tag if isinstance(element.tag, str) else ''
        if event == 'start':
            if tag in _PARAGRAPH_TAGS:
                out.newline(2)
            elif tag in _LINE_TAGS:
                out.newline(1)
            if tag == 'pre':
                pre_depth += 1
            elif tag in ('ul', 'ol'):
                list_counters.append(None if tag == 'ul' else 1)
            elif tag == 'li':
                counter = list_counters[-1] if list_counters else None
                if counter is None:
                    out.write('- ')
                else:
                    out.write(f'{counter}. ')
                    list_counters[-1] = counter + 1
            elif len(tag) == 2 and tag[0] == 'h' and tag[1] in '123456':
                out.write('#' * int(tag[1]) + ' ')
            elif tag in ('td', 'th') and element.getprevious() is not None:
                out.write(' | ')
            elif tag == 'a' and (href := _link_target(element, base_url)):
                open_links[id(element)] = href
                out.write('[')
            if element.text:
                out.write(element.text, pre=pre_depth > 0)
        else:
            if tag == 'pre':
                pre_depth -= 1
            elif tag in ('ul', 'ol') and list_counters:
                list_counters.pop()
            elif tag == 'a' and (href := open_links.pop(id(element), None)):
                out.write(f']({href})')
            if tag in _PARAGRAPH_TAGS:
                out.newline(2)
            elif tag in _LINE_TAGS:
                out.newline(1)
            if element.tail:
                out.write(element.tail, pre=pre_depth > 0)
    return out.result()


def _link_target(element: Any, base_url: str) -> str | None:
    """The absolute http(s) URL a link points to, or `None` for fragments, scripts, mail and empty links."""
    href = str(element.get('href') or '').strip()
    label = str(element.text_content()).strip()
    if not href or href.startswith('#') or not label:
        return None
    try:
        absolute = urljoin(base_url, href)
        scheme = urlsplit(absolute).scheme
    except ValueError:
        return None
    # A link whose text is its own URL needs no second copy.
    return absolute if scheme in ('http', 'https') and label not in (href, absolute) else None

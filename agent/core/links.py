"""Inert links: in an answer shaped by untrusted content, a URL nobody trusted becomes plain text.

A chat frontend fetches an image the moment it renders one, so a model steered by a web page can
leak anything from the conversation in an image's address, with no click (EchoLeak,
CVE-2025-32711). `neutralize` rewrites every URL of an answer that the `LinkPolicy` does not trust
into inert text that still shows where it pointed: Markdown images and links, inline and
reference-style, HTML tags (`img`, `a`, `iframe`, `source`, any other), autolinks and bare URLs.

It looks for destinations the way renderers read them: HTML entities and Markdown escapes are
decoded, tabs and newlines dropped and backslashes read as slashes (as browsers do), and
protocol-relative (`//host`) addresses count as the absolute ones they are. A destination that
stays on the page's own origin (a relative path) is left alone.

`StreamNeutralizer` does the same to an answer that arrives in pieces: it holds back whatever could
still become part of a construct (an unfinished tag, a link waiting for its `)`, the last word), so
the pieces it releases join up to exactly `neutralize` of the whole text.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ['LinkPolicy', 'StreamNeutralizer', 'neutralize', 'url_netloc']

Kind = Literal['image', 'link', 'frame']

_NETWORK_PORTS = {'http': 80, 'https': 443, 'ws': 80, 'wss': 443, 'ftp': 21}
_HARMLESS_SCHEMES = frozenset({'data'})
"""Schemes that request nothing from anywhere: a `data:` image is drawn from the answer itself."""
_LABEL_REACH = 1000
"""How far back a link's `[` may be from its `]`; further, only the destination is rewritten."""
_SHOWN_CHARS = 60

_IMAGE_TAGS = frozenset({'img', 'image', 'source', 'picture', 'video', 'audio', 'input', 'track'})
_FRAME_TAGS = frozenset({'iframe', 'frame', 'embed', 'object', 'portal'})
_ACTIVE_TAGS = frozenset({'script', 'style', 'base', 'meta', 'link', 'svg', 'math'})
"""Tags that can make a page fetch what no attribute shows (script, CSS, a new base URL): always inert."""
_EVENT_HANDLER = re.compile(r'[\s/"\']on[a-z]+\s*=', re.I)
_CSS_ESCAPE = re.compile(r'\\(?:([0-9A-Fa-f]{1,6})[ \t\n]?|(.))')

_SCHEME = re.compile(r'([A-Za-z][A-Za-z0-9+.\-]*):')
_DROPPED = re.compile(r'[\t\n\r]')
_EDGE_CONTROLS = re.compile(r'^[\x00-\x20]+|[\x00-\x20]+$')
_BARE_HOST = re.compile(r'(?:[a-z0-9\-]+\.)+[a-z]{2,}|\d{1,3}(?:\.\d{1,3}){3}|localhost')
_WRITTEN_URL = re.compile(r'(?:https?|ftp)://[^\s<>"\'`()\[\]]+', re.I)
"""A URL as a user writes one inside other text: a Markdown link, parentheses, quotes."""
_MD_ESCAPE = re.compile(r'\\([!-/:-@\[-`{-~])')
_AUTOLINK = re.compile(r'<([A-Za-z][A-Za-z0-9+.\-]{1,31}:[^\s<>]*)>')
_TAG_NAME = re.compile(r'<([A-Za-z][^\s/>]*)')
# Inside a decoded tag: every `scheme://authority`, `//authority` and `http:authority` it holds.
_TAG_AUTHORITY = re.compile(r'(?:\b[a-z][a-z0-9+.\-]*:)?//+[^\s"\'<>]*|\b(?:https?|wss?|ftp):(?!/)[^\s"\'<>]+', re.I)
_HOST = r'(?:(?:[A-Za-z0-9\-]+\.)+[A-Za-z0-9\-]+|localhost|\[[0-9A-Fa-f:.]+\])(?::\d+)?'
_SITE = re.compile(
    r'(?P<tag><[A-Za-z])'
    r'|(?P<dest>\]\()'
    r'|(?P<definition>\]:)'
    r'|(?P<bare>(?<![A-Za-z0-9_@.+\-])(?:(?:https?|ftp)://|www\.))'
    rf'|(?P<relative>(?<![A-Za-z0-9_/\\])[/\\]{{2}}(?={_HOST}))',
    re.I,
)
_BLANK_LINE = re.compile(r'\n[ \t]*\n')


@dataclass(frozen=True)
class LinkPolicy:
    """Which addresses an answer may keep live.

    Args:
        hosts: `host` or `host:port` (default ports left out), lowercase: addresses on them stay live.
            The hosts the user named, and the configured allowlist.
        host_patterns: `*.example.com`: any subdomain of `example.com` stays live.
        link_urls: Exact URLs that stay live as links, not as images: what a web search of the turn returned.
    """

    hosts: frozenset[str] = frozenset()
    host_patterns: frozenset[str] = frozenset()
    link_urls: frozenset[str] = frozenset()

    @classmethod
    def from_sources(
        cls, *, user_texts: Iterable[str] = (), allowlist: Iterable[str] = (), link_urls: Iterable[str] = ()
    ) -> LinkPolicy:
        """The policy for a turn: hosts the user wrote (with or without a scheme), the allowlist, search results."""
        hosts: set[str] = set()
        patterns: set[str] = set()
        for entry in allowlist:
            entry = entry.strip().lower()
            if entry.startswith('*.'):
                patterns.add(entry[1:])
            elif entry:
                hosts.add(entry)
        for text in user_texts:
            words = [word.strip('.,;:!?()[]{}<>"\'`*_') for word in text.split()]
            for word in [*words, *_WRITTEN_URL.findall(text)]:
                netloc = url_netloc(word, bare_host=True)
                if netloc is not None:
                    hosts.add(netloc)
        return cls(frozenset(hosts), frozenset(patterns), frozenset(url.strip() for url in link_urls))

    def allows(self, url: str, netloc: str | None, kind: Kind) -> bool:
        """Whether `url` (on `netloc`, `None` for a non-network scheme) may stay live as a `kind`."""
        if netloc is None:
            return _scheme(url) in _HARMLESS_SCHEMES
        host = netloc.rsplit(':', 1)[0] if not netloc.endswith(']') else netloc
        if netloc in self.hosts or host in self.hosts:
            return True
        if any(host.endswith(suffix) for suffix in self.host_patterns):
            return True
        return kind == 'link' and url.strip() in self.link_urls


def url_netloc(text: str, *, bare_host: bool = False) -> str | None:
    """`host[:port]` of an absolute or protocol-relative address, as a browser would resolve it.

    Args:
        text: The address as written in a destination, already decoded.
        bare_host: Also read `example.com/path` (no scheme) as an address, as people write them.

    Returns:
        The lowercase host and any non-default port, or `None` for a relative address or a word.
    """
    text = _EDGE_CONTROLS.sub('', _DROPPED.sub('', text)).replace('\\', '/')
    match = _SCHEME.match(text)
    default_port: int | None = None
    written_bare = False
    if match and match.group(1).lower() in _NETWORK_PORTS:
        default_port = _NETWORK_PORTS[match.group(1).lower()]
        rest = text[match.end() :].lstrip('/')
    elif text.startswith('//'):
        rest = text.lstrip('/')
    elif bare_host and (not match or text[match.end() : match.end() + 1].isdigit()):
        rest = text  # `example.com/a`, or `intranet:8080/a`: a host, not a scheme
        written_bare = True
    else:
        return None
    authority = re.split(r'[/?#]', rest, maxsplit=1)[0].rsplit('@', 1)[-1].lower()
    if authority.startswith('['):
        host, _, port = authority.partition(']')
        host, port = host + ']', port.removeprefix(':')
    else:
        host, _, port = authority.partition(':')
    host = host.rstrip('.')
    if not host or (written_bare and not _BARE_HOST.fullmatch(host)):
        return None
    if port.isdigit() and int(port) == default_port:
        port = ''
    return f'{host}:{port}' if port else host


def _scheme(url: str) -> str | None:
    match = _SCHEME.match(_DROPPED.sub('', url).strip())
    return match.group(1).lower() if match else None


def _target(dest: str) -> tuple[str, str | None] | None:
    """`(url, netloc)` for a destination that leaves the page's origin, `None` for a relative one."""
    netloc = url_netloc(dest)
    if netloc is not None:
        return dest, netloc
    return (dest, None) if _scheme(dest) is not None else None


def _inert(kind: str, url: str) -> str:
    """What a removed address becomes: `[image removed: host/path]`, in brackets escaped so that it links nothing.

    The query and fragment are left out (that is where leaked data usually rides), and the address is
    quoted as code, which no renderer turns into a link.
    """
    text = _EDGE_CONTROLS.sub('', _DROPPED.sub('', url)).replace('\\', '/')
    scheme = _scheme(text)
    if scheme is None or scheme in _NETWORK_PORTS:
        rest = text[len(scheme) + 1 :] if scheme else text
        authority, slash, path = re.split(r'[?#]', rest.lstrip('/'), maxsplit=1)[0].partition('/')
        shown = (authority.rsplit('@', 1)[-1].removeprefix('www.') + slash + path).rstrip('/')
    else:
        shown = re.split(r'[?#,;]', text, maxsplit=1)[0]
    shown = shown.replace('`', '')
    if len(shown) > _SHOWN_CHARS:
        shown = shown[: _SHOWN_CHARS - 1] + '…'
    return f'\\[{kind} removed: `{shown}`\\]' if shown else f'\\[{kind} removed\\]'


@dataclass
class _Scan:
    """The rewrites of one text, and where a construct still open at its end begins."""

    edits: list[tuple[int, int, str]] = field(default_factory=list[tuple[int, int, str]])
    pending: int | None = None

    def replace(self, start: int, end: int, text: str) -> None:
        while self.edits and self.edits[-1][0] >= start:  # an outer construct takes in the ones inside it
            self.edits.pop()
        self.edits.append((start, end, text))


def neutralize(text: str, policy: LinkPolicy) -> str:
    """`text` with every address `policy` does not trust made inert; the rest unchanged."""
    return _apply(text, _scan(text, policy, final=True))


def _apply(text: str, scan: _Scan, start: int = 0) -> str:
    """`text[start:]` with the scan's rewrites made."""
    out: list[str] = []
    position = start
    for start, end, replacement in scan.edits:
        out += [text[position:start], replacement]
        position = end
    out.append(text[position:])
    return ''.join(out)


def _scan(text: str, policy: LinkPolicy, *, final: bool, start: int = 0) -> _Scan:
    """The rewrites of `text[start:]`, reading what comes before `start` as context.

    Not `final`: `text` may go on, so a construct open at its end is not judged but marks `pending`.
    """
    scan = _Scan()
    position = start
    while (site := _SITE.search(text, position)) is not None:
        start = site.start()
        kind = site.lastgroup
        if kind == 'tag':
            end = _tag_end(text, start)
            if end is None and not final:
                scan.pending = start
                return scan
            end = end or len(text)
            _judge_tag(text, start, end, policy, scan)
            position = end
        elif kind in ('dest', 'definition'):
            parsed = _destination(text, site.end(), inline=kind == 'dest')
            # The construct ends at an inline link's `)`, or after a definition's title.
            finish = (_closing_paren if kind == 'dest' else _title_end)(text, parsed[1]) if parsed else None
            if finish is None and not final:
                scan.pending = _held_from(text, start)
                return scan
            dest, dest_end = parsed or (text[site.end() :].strip(), len(text))
            end = finish or dest_end
            _judge_destination(text, start, end, _decode(dest, markdown=True), policy, scan)
            position = max(end, site.end())
        else:
            end, at_end = _bare_end(text, start)
            if at_end and not final:
                scan.pending = start
                return scan
            url = text[start:end]
            if site.group('bare') and url.lower().startswith('www.'):
                url = f'http://{url}'
            target = _target(url)
            if target is not None and not policy.allows(target[0], target[1], 'link'):
                scan.replace(start, end, _inert('link', text[start:end]))
            position = max(end, site.end())
    return scan


def _held_from(text: str, site: int) -> int:
    """Where an open link or definition at `]` `site` starts: its label's `[`, else the `]` itself."""
    label, _ = _label_start(text, site)
    return label if label is not None else site


def _judge_destination(text: str, site: int, end: int, dest: str, policy: LinkPolicy, scan: _Scan) -> None:
    """A Markdown link or image (`](dest)`) or reference definition (`]: dest`): the whole construct goes."""
    label, image = _label_start(text, site)
    if text.startswith(']:', site) and label is not None:
        image = _used_as_image(text, label, site)
    kind: Kind = 'image' if image else 'link'
    target = _target(dest)
    if target is None or policy.allows(target[0], target[1], kind):
        return
    if label is None:  # no label found: the destination alone goes, after the `]`
        scan.replace(site + 1, end, ' ' + _inert(kind, target[0]))
    else:
        scan.replace(label, end, _inert(kind, target[0]))


def _judge_tag(text: str, start: int, end: int, policy: LinkPolicy, scan: _Scan) -> None:
    raw = text[start:end]
    name_match = _TAG_NAME.match(raw)
    name = name_match.group(1).lower() if name_match else ''
    kind: Kind = 'image' if name in _IMAGE_TAGS else 'frame' if name in _FRAME_TAGS else 'link'
    autolink = _AUTOLINK.fullmatch(raw)
    if autolink is not None:
        candidates = [_decode(autolink.group(1), markdown=False)]
    else:
        decoded = _css_unescaped(_decode(raw, markdown=False))
        candidates = [match.group(0) for match in _TAG_AUTHORITY.finditer(decoded)]
        if name in _ACTIVE_TAGS or _EVENT_HANDLER.search(decoded):
            # Script and CSS can fetch from addresses no attribute shows: nothing of it stays live.
            shown = next((url for url in candidates if _target(url) is not None), '')
            scan.replace(start, end, _inert(kind if name not in _ACTIVE_TAGS else name, shown))
            return
    for candidate in candidates:
        target = _target(candidate)
        if target is not None and not policy.allows(target[0], target[1], kind):
            scan.replace(start, end, _inert(kind, target[0]))
            return


def _css_unescaped(text: str) -> str:
    """CSS escapes decoded, as a style attribute's `url(\\68ttps://...)` is read."""

    def char(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return match.group(2)
        code = int(match.group(1), 16)
        return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else '\ufffd'

    return _CSS_ESCAPE.sub(char, text)


def _decode(text: str, *, markdown: bool) -> str:
    """A destination as a renderer reads it: escapes and entities decoded, tabs and newlines gone."""
    if markdown:
        text = _MD_ESCAPE.sub(r'\1', text)
    return _DROPPED.sub('', html.unescape(text))


def _tag_end(text: str, start: int) -> int | None:
    """The end of the HTML tag at `start` as a browser tokenizes it: a quote counts only where a value starts."""
    i, n = start + 1, len(text)
    state = _IN_NAME
    while i < n:
        char = text[i]
        if state in (_IN_DOUBLE, _IN_SINGLE):
            if char == ('"' if state == _IN_DOUBLE else "'"):
                state = _BETWEEN
        elif char == '>':
            return i + 1
        elif state == _BEFORE_VALUE:
            state = _IN_DOUBLE if char == '"' else _IN_SINGLE if char == "'" else state if char.isspace() else _IN_VALUE
        elif char == '=' and state in (_IN_ATTRIBUTE, _AFTER_ATTRIBUTE):
            state = _BEFORE_VALUE
        elif char.isspace():
            state = _AFTER_ATTRIBUTE if state == _IN_ATTRIBUTE else _BETWEEN
        elif state in (_BETWEEN, _AFTER_ATTRIBUTE) and char != '/':
            state = _IN_ATTRIBUTE
        i += 1
    return None


_IN_NAME, _BETWEEN, _IN_ATTRIBUTE, _AFTER_ATTRIBUTE, _BEFORE_VALUE, _IN_VALUE, _IN_DOUBLE, _IN_SINGLE = range(8)


def _destination(text: str, start: int, *, inline: bool) -> tuple[str, int] | None:
    """The link destination after `](` or `]:`, and where it ends; `None` if it may still grow."""
    i, n = start, len(text)
    newlines = 0
    while i < n and text[i] in ' \t\n':
        newlines += text[i] == '\n'
        if newlines > 1:
            return '', i
        i += 1
    if i == n:
        return None
    begin = i
    if text[i] == '<':
        i += 1
        while i < n and text[i] not in '>\n':
            i += 2 if text[i] == '\\' else 1
        return (text[begin + 1 : i], i + 1) if i < n else None
    depth = 0
    while i < n:
        char = text[i]
        if char == '\\':
            i += 2
            continue
        if char.isspace() or ord(char) < 32:
            break
        if char == '(':
            depth += 1
        elif char == ')':
            if depth == 0 and inline:
                break
            depth -= 1
        i += 1
    return (text[begin:i], i) if i < n else None


def _title_end(text: str, start: int) -> int | None:
    """The end of a reference definition's title on the rest of its line, `start` when it has none."""
    line_end = text.find('\n', start)
    rest = text[start:] if line_end < 0 else text[start:line_end]
    if not rest.strip():
        return start if line_end >= 0 else None
    stripped = rest.lstrip(' \t')
    if stripped[0] not in '"\'(':
        return start
    if line_end < 0:
        return None
    return line_end


def _used_as_image(text: str, label: int, close: int) -> bool:
    """Whether the text before a reference definition used its label for an image: `![alt][label]` or `![label]`."""
    name = re.escape(text[label + 1 : close])
    return re.search(rf'!\[(?:[^\]]*\]\[)?{name}\]', text[:label], re.I) is not None


def _closing_paren(text: str, start: int) -> int | None:
    """The end of an inline link after its destination: just past its `)`, within the paragraph."""
    quote: str | None = None
    i, n = start, len(text)
    while i < n:
        char = text[i]
        if char == '\\':
            i += 2
            continue
        if quote is not None:
            if char == quote:
                quote = None
        elif char in '"\'':
            quote = char
        elif char == '(' and i > start:
            quote = ')'
        elif char == ')':
            return i + 1
        if text.startswith('\n\n', i):
            return start
        i += 1
    return None


def _label_start(text: str, close: int) -> tuple[int | None, bool]:
    """The `[` (or `![`) that the `]` at `close` ends, within the paragraph and `_LABEL_REACH`: (start, is_image)."""
    depth = 0
    floor = max(0, close - _LABEL_REACH)
    i = close
    while i >= floor:
        char = text[i]
        escaped = i > 0 and text[i - 1] == '\\'
        if char == '\n' and _BLANK_LINE.match(text, i):
            break  # a link's text ends with its paragraph
        if not escaped and char == ']':
            depth += 1
        elif not escaped and char == '[':
            depth -= 1
            if depth == 0:
                image = i > 0 and text[i - 1] == '!'
                return (i - 1 if image else i), image
        i -= 1
    return None, False


def _bare_end(text: str, start: int) -> tuple[int, bool]:
    """The end of a bare URL, as GFM reads one: up to whitespace or `<`, less trailing punctuation and
    unbalanced `)`; and whether it runs to the end of `text` (so it may go on)."""
    end, n = start, len(text)
    while end < n and not text[end].isspace() and text[end] != '<':
        end += 1
    at_end = end == n
    while end > start and text[end - 1] in '?!.,:*_~\'"':
        end -= 1
    while end > start and text[end - 1] == ')' and text.count('(', start, end) < text.count(')', start, end):
        end -= 1
    return end, at_end


class StreamNeutralizer:
    """`neutralize` for an answer that arrives in pieces; the pieces it returns join up to the same text.

    It holds back what could still turn into a live construct: the last word (a URL being written),
    an unfinished HTML tag, a link waiting for its destination or `)`, a `[` still open in the
    paragraph. A reader sees whole words and finished links, never a half-rewritten one.
    """

    def __init__(self, policy: LinkPolicy) -> None:
        self._policy = policy
        self._raw = ''
        self._done = 0
        """How much of the text is shown: no construct spans this point, so a scan can resume from it."""

    def feed(self, piece: str) -> str:
        """Take the next piece of the answer; return what may be shown now (maybe nothing)."""
        self._raw += piece
        cut, scan = self._stable_end()
        return self._show(cut, scan) if scan is not None else ''

    def finish(self) -> str:
        """The rest of the answer, all of it now final."""
        return self._show(len(self._raw), _scan(self._raw, self._policy, final=True, start=self._done))

    def _show(self, cut: int, scan: _Scan) -> str:
        shown = _apply(self._raw[:cut], scan, self._done)
        self._done = cut
        return shown

    def _stable_end(self) -> tuple[int, _Scan | None]:
        """How much of the text is final, with its rewrites (`None` when nothing new is).

        Nothing after the cut can change how the part before it reads, so a scan that finds nothing
        still open before it rewrites that part as `neutralize` of the whole text will.
        """
        raw = self._raw
        cut = len(raw)
        while cut > self._done and not raw[cut - 1].isspace():
            cut -= 1  # the last word may be a URL still being written
        while cut > self._done:  # each hold may cut into a construct that then holds from further back
            scan = _scan(raw[:cut], self._policy, final=False, start=self._done)
            held = [
                position for position in (scan.pending, _open_bracket(raw, cut, self._done)) if position is not None
            ]
            if not held:
                return cut, scan
            cut = min(held)
        return cut, None


def _open_bracket(text: str, end: int, shown: int) -> int | None:
    """The earliest `[` (or `![`) before `end` in the last paragraph, within reach, that nothing closed yet.

    Every `[` before `shown` was closed before it (else it would have been held), so the search starts there.
    """
    reach = max(0, end - _LABEL_REACH)
    floor = max((blank.end() for blank in _BLANK_LINE.finditer(text, max(0, reach - 2), end)), default=reach)
    stack: list[int] = []
    i = max(floor, reach, shown)
    while i < end:
        char = text[i]
        if char == '\\':
            i += 2
            continue
        if char == '[':
            stack.append(i - 1 if i > 0 and text[i - 1] == '!' else i)
        elif char == ']' and stack:
            stack.pop()
        i += 1
    return stack[0] if stack else None

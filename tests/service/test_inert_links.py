"""No zero-click leaks through `tandem serve`: a page the user had fetched plants exfiltration URLs; the
answer comes back inert, plain and streamed, and a browser rendering it as a chat frontend would
(Markdown to HTML, raw HTML allowed) sends the canary nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from tandem.agent import Assistant
from tandem.agent.core.config import Settings, WebConfig
from tandem.agent.core.events import TextDelta
from tests.service.conftest import AUTH_A, MakeApp, asgi
from tests.support.browser import CHROMIUM, dump_dom
from tests.support.deps import scripted_backbone
from tests.support.loopback_http import LoopbackHTTPServer, html_reply
from tests.support.planted import CANARY_PATHS, SECRET, steered_model

MARKED = Path('/usr/share/javascript/marked/marked.min.js')
"""Debian's `libjs-marked` (`make browser` installs it): the renderer Open WebUI uses."""
needs_marked = pytest.mark.skipif(
    CHROMIUM is None or not MARKED.is_file(),
    reason='chromium or libjs-marked is not installed: `make browser` installs them from Debian',
)


def _app(make_app: MakeApp, notes: LoopbackHTTPServer, **security: object) -> FastAPI:
    page = notes.url('/notes')
    overrides = {'tools': ['web'], 'web': {'allowed_hosts': [notes.netloc]}, 'security': security}
    return make_app(steered_model(page), overrides=overrides)


def _question(notes: LoopbackHTTPServer) -> str:
    return f'My PIN is {SECRET}. Fetch {notes.url("/notes")} and tell me what it says.'


def _ask(notes: LoopbackHTTPServer) -> dict[str, object]:
    return {'model': 'scripted', 'messages': [{'role': 'user', 'content': _question(notes)}]}


async def _answers(app: FastAPI, notes: LoopbackHTTPServer) -> tuple[str, str]:
    """The answer as a plain completion, and as the joined pieces of a streamed one."""
    async with asgi(app) as http:
        plain = await http.post('/v1/chat/completions', json=_ask(notes), headers=AUTH_A)
        assert plain.status_code == 200, plain.text
        pieces: list[str] = []
        async with http.stream(
            'POST', '/v1/chat/completions', json={**_ask(notes), 'stream': True}, headers=AUTH_A
        ) as streamed:
            async for line in streamed.aiter_lines():
                if line.startswith('data: {'):
                    for choice in json.loads(line[6:])['choices']:
                        pieces.append(choice['delta'].get('content') or '')
    return plain.json()['choices'][0]['message']['content'], ''.join(pieces)


async def test_the_service_returns_the_planted_urls_inert_plain_and_streamed(
    make_app: MakeApp, notes: LoopbackHTTPServer, canary: LoopbackHTTPServer
) -> None:
    plain, streamed = await _answers(_app(make_app, notes), notes)

    assert streamed == plain
    assert SECRET not in plain
    for path in CANARY_PATHS:
        assert f'{canary.netloc}{path}`' in plain  # inert text that still shows where it pointed
    assert f'[your page]({notes.url("/notes")})' in plain  # the page the user named stays a live link
    assert canary.request_count == 0


def _render(answers: dict[str, str], tmp_path: Path) -> str:
    """Each answer rendered by marked into its own element of one page, loaded by headless Chromium: its DOM."""
    script = MARKED.read_text()
    blocks = ''.join(
        f'<div id="{name}"></div><script>document.getElementById({json.dumps(name)}).innerHTML = '
        f'marked.parse({json.dumps(answer)});</script>'
        for name, answer in answers.items()
    )
    page = f'<!DOCTYPE html><html><head><script>{script}</script></head><body>{blocks}</body></html>'
    with LoopbackHTTPServer({'/chat': html_reply(page)}) as frontend:
        dom, _ = dump_dom(frontend.url('/chat'), tmp_path / 'profile', '--virtual-time-budget=5000')
    return dom


@needs_marked
async def test_a_browser_rendering_the_answer_sends_the_canary_nothing(
    make_app: MakeApp, notes: LoopbackHTTPServer, canary: LoopbackHTTPServer, tmp_path: Path
) -> None:
    plain, streamed = await _answers(_app(make_app, notes), notes)
    dom = _render({'plain': plain, 'streamed': streamed}, tmp_path)

    assert canary.request_count == 0
    rendered = re.sub(r'<script>.*?</script>', '', dom, flags=re.S)
    assert not re.search(rf'(?:src|href|srcset)="[^"]*{re.escape(canary.netloc)}', rendered)
    assert rendered.count(f'<code>{canary.netloc}/') == 2 * len(CANARY_PATHS)  # shown as text, in both answers
    assert f'<a href="{notes.url("/notes")}">your page</a>' in dom


@needs_marked
async def test_the_same_answer_left_live_would_have_leaked_with_no_click(
    make_app: MakeApp, notes: LoopbackHTTPServer, canary: LoopbackHTTPServer, tmp_path: Path
) -> None:
    # The control: with `output_urls = "allow"` the browser fetches every planted image at once.
    plain, _ = await _answers(_app(make_app, notes, output_urls='allow'), notes)
    _render({'plain': plain}, tmp_path)

    fetched = sorted({request.path for request in canary.requests})
    assert fetched == ['/html.png', '/inline.png', '/reference.png']
    assert all(SECRET in request.query for request in canary.requests)


async def test_the_python_api_returns_the_same_inert_answer_from_chat_and_stream(
    redis_url: str, notes: LoopbackHTTPServer, canary: LoopbackHTTPServer, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path, redis_url=SecretStr(redis_url), tools=['web'], web=WebConfig(allowed_hosts=[notes.netloc])
    )
    model = steered_model(notes.url('/notes'))
    text = _question(notes)
    async with Assistant.from_config(settings, backbones={'scripted': scripted_backbone(model)}) as assistant:
        chatted = await assistant.chat(text)
        pieces = [event.text async for event in assistant.stream(text) if isinstance(event, TextDelta)]

    assert ''.join(pieces) == chatted.answer
    assert SECRET not in chatted.answer and f'{canary.netloc}/inline.png`' in chatted.answer

"""`/docs` and `/redoc` work with no network: their assets come from the service, checked in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.service.conftest import MakeApp, live
from tests.support.browser import dump_dom, needs_chromium
from tests.support.scripted import scripted_model

OFFLINE = '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'
"""Every host but the service's fails to resolve, as on a machine with no network."""


@needs_chromium
def test_the_swagger_page_renders_every_endpoint_with_no_network(make_app: MakeApp, tmp_path: Path) -> None:
    model, _ = scripted_model()
    with live(make_app(model)) as url:
        base = url.removesuffix('/v1')
        dom, _ = dump_dom(f'{base}/docs', tmp_path / 'profile', OFFLINE, '--virtual-time-budget=15000')

    rendered = set(re.findall(r'data-path="([^"]+)"', dom))
    assert {'/v1/chat/completions', '/v1/models', '/v1/sessions', '/healthz'} <= rendered


def test_the_docs_pages_name_no_other_host(make_app: MakeApp) -> None:
    model, _ = scripted_model()
    with live(make_app(model)) as url:
        base = url.removesuffix('/v1')
        pages = {path: httpx.get(f'{base}{path}', timeout=10) for path in ('/docs', '/redoc')}
        assets = [re.findall(r'(?:src|href)="([^"]+)"', page.text) for page in pages.values()]
        fetched = [httpx.get(f'{base}{asset}', timeout=10).status_code for found in assets for asset in found]

    assert all(page.status_code == 200 for page in pages.values())
    assert all(asset.startswith('/') for found in assets for asset in found), assets
    assert fetched and set(fetched) == {200}

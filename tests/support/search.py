"""A stand-in for DuckDuckGo's HTML results page, for `make_web_toolset(search_url=...)`."""

from __future__ import annotations

import html
from urllib.parse import quote


def duckduckgo_page(*results: tuple[str, str, str]) -> str:
    """DuckDuckGo's HTML endpoint's markup for `(title, url, snippet)` results, links wrapped as it wraps them."""
    blocks: list[str] = []
    for title, url, snippet in results:
        link = html.escape(f'//duckduckgo.com/l/?uddg={quote(url, safe="")}&rut=abc', quote=True)
        blocks.append(
            '<div class="result results_links results_links_deep web-result">'
            '<div class="links_main links_deep result__body">'
            f'<h2 class="result__title"><a rel="nofollow" class="result__a" href="{link}">{html.escape(title)}</a></h2>'
            f'<div class="result__extras"><a class="result__url" href="{link}">{html.escape(url)}</a></div>'
            f'<a class="result__snippet" href="{link}">{html.escape(snippet)}</a>'
            '</div></div>'
        )
    return f'<html><body><div class="serp__results"><div id="links" class="results">{"".join(blocks)}</div></div></body></html>'

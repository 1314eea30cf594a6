"""A real MCP server for tests, written with the `mcp` SDK: stdio by default, streamable HTTP with `--http PORT`.

Its tools cover what Tandem's MCP policy tells apart: a read-only tool, a tool with a side effect
(it appends to `$NOTES_FILE`), and one that kills the server mid-call. With `$FAIL_LISTING` set it
connects but fails to list its tools. With `--http`, every request
must carry `Authorization: Bearer $MCP_TOKEN`.
"""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations


class _DemoServer(MCPServer):
    async def list_tools(self):
        if os.environ.get('FAIL_LISTING'):  # connects, then cannot say what it offers
            raise RuntimeError('the tool list is broken')
        return await super().list_tools()


server = _DemoServer('demo')


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def save_note(text: str) -> str:
    """Store a note."""
    with open(os.environ['NOTES_FILE'], 'a', encoding='utf-8') as notes:
        notes.write(text + '\n')
    return 'stored'


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def crash() -> str:
    """Stop the server in the middle of the call."""
    os._exit(3)


def _serve_http(port: int) -> None:
    import uvicorn
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    token = os.environ['MCP_TOKEN']
    app = server.streamable_http_app()

    async def check(request: Request, call_next):
        if request.url.path == '/healthz':
            return PlainTextResponse('ok')
        if request.headers.get('authorization') != f'Bearer {token}':
            return PlainTextResponse('unauthorized', status_code=401)
        return await call_next(request)

    app.add_middleware(BaseHTTPMiddleware, dispatch=check)
    uvicorn.run(app, host='127.0.0.1', port=port, log_level='warning')


if __name__ == '__main__':
    if sys.argv[1:2] == ['--http']:
        _serve_http(int(sys.argv[2]))
    else:
        server.run()

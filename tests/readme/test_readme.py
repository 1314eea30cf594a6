"""The READMEs are the contract: every block a user would run, runs, in the order the README gives it.

Each README (README.md, scenarios/README.md, deploy/README.md) runs in a sandbox of its own: a
working directory holding copies of `scenarios/` and `deploy/`, a `docs/` folder to ingest, the real
test Redis, and a loopback OpenAI-compatible server standing in for the model (the only double).
Shell blocks run verbatim in bash with the venv's `tandem` first on PATH, as after
`source .venv/bin/activate`; a handful of substitutions point the README's example addresses
(`127.0.0.1:8000`, `redis.internal`) at the sandbox's servers. Python blocks run in-process (top-level
`await` allowed) and are linted with pytest-examples' ruff, as pydantic-ai does for its docs.

A block, or a command inside one, that cannot run offline is listed below with the reason; any
other block that appears in a README fails this test until it runs or is listed. So when a README
changes, this file changes with it.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pytest_examples import CodeExample, EvalExample, find_examples

from tests.support.fake_openai import FakeOpenAI
from tests.support.loopback_http import free_port
from tests.support.served import served

ROOT = Path(__file__).resolve().parents[2]
READMES = ('README.md', 'scenarios/README.md', 'deploy/README.md')
BIN = Path(sys.executable).parent

# Blocks that are not commands: output shown as an illustration, diagrams, file fragments shown for
# their shape. Keyed by README and the block's first line.
NOT_COMMANDS: dict[tuple[str, str], str] = {
    ('README.md', '$ make chat'): 'a REPL transcript (tests/agent/test_repl.py drives the REPL)',
    ('README.md', '{"mcpServers": {"tandem": {"command": "tandem", "args": ["mcp"], "env": {"TANDEM_USER": "ada"}}}}'): (
        "a desktop client's configuration (the Python example after it starts `tandem mcp` the same way)"
    ),
    ('README.md', 'front ends   agent/cli/        `tandem`: main.py registers every command module top-down; they share _app.py'): (
        'an architecture diagram (tests/test_layers.py checks the layers it draws)'
    ),
    ('scenarios/README.md', 'scenarios/calc.yaml:9:7: turns[0].expect.max_tool_call: unknown key; did you mean '
     "'max_tool_calls'?"): 'example output of a schema error (tests/scenarios/test_schema.py checks the messages)',
    ('scenarios/README.md', 'replay miss: no cassette 3f2a… in cassettes for a request to openai:gpt-4.1-mini (1 '
     'message, last user:'): 'example output of a replay miss (tests/scenarios/test_cassettes.py checks it)',
    ('deploy/README.md', 'clients ──► load balancer ──► host 1: tandem serve --workers 2 ──┐'): 'a diagram',
}  # fmt: skip

# Commands inside shell blocks that cannot run here; the bash prelude below stands in for them
# and records the reason.
PRELUDE = r"""
set -euo pipefail
readme_skip() { echo "readme: not run: $*"; }
make() { readme_skip "make $*: the README test runs inside make test; .ci/run runs make chat and make test from a fresh clone"; }
pytest() { readme_skip "pytest $*: would run the test suite inside itself"; }
vllm() { readme_skip "vllm $1: needs vLLM, a GPU and model weights; the loopback server stands in for it"; }
ollama() { readme_skip "ollama $1: needs Ollama and model weights; the loopback server stands in for it"; }
docker() { readme_skip "docker $1: needs a Docker daemon and registry access (test_the_compose_image_builds_from_paths_that_exist checks the file)"; }
readme_wait() {  # until the server on port $1 answers /healthz
  python -c "
import sys, time, httpx
deadline = time.monotonic() + 120
while True:
    try:
        if httpx.get('http://127.0.0.1:$1/healthz', timeout=1).status_code == 200: break
    except httpx.HTTPError: pass
    if time.monotonic() > deadline: sys.exit('the server on port $1 did not start')
    time.sleep(0.2)
"
}
readme_serve() {
  local port=8000 args=("$@") auth=1
  for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--port" ] && port="${args[$((i + 1))]}"
    [ "${args[$i]}" = "--no-auth" ] && auth=0
  done
  command tandem "$@" 2>"serve-$port.log" &
  local pid=$!
  readme_wait "$port"
  python -c "
import os, httpx
base = 'http://127.0.0.1:$port'
key = os.environ.get('TANDEM_API_KEYS', ':').split(',')[0].rsplit(':', 1)[0] if $auth else ''
models = httpx.get(base + '/v1/models', headers={'Authorization': 'Bearer ' + key} if key else {}, timeout=30)
models.raise_for_status()
print('readme: tandem serve answered', [m['id'] for m in models.json()['data']])
"
  kill -TERM "$pid"
  wait "$pid" || [ $? -eq 143 ]  # uvicorn re-raises SIGTERM once it has shut down cleanly
}
readme_mcp_http() {
  local port="${@: -1}"
  command tandem "$@" 2>"mcp-$port.log" &
  local pid=$!
  readme_wait "$port"
  python -c "
import asyncio, os, httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
base = 'http://127.0.0.1:$port'
key = os.environ['TANDEM_API_KEYS'].split(',')[0].rsplit(':', 1)[0]
async def tools():
    async with httpx2.AsyncClient(headers={'Authorization': 'Bearer ' + key}) as http:
        async with Client(streamable_http_client(base + '/mcp', http_client=http)) as client:
            return sorted(tool.name for tool in (await client.list_tools()).tools)
print('readme: tandem mcp answered', asyncio.run(tools()))
"
  kill -TERM "$pid"
  wait "$pid" || [ $? -eq 143 ]
}
tandem() {
  case "$*" in
    serve\ *) readme_serve "$@" ;;
    "mcp --http"*) readme_mcp_http "$@" ;;
    "tune submit"* | "tune status"*) readme_skip "tandem $1 $2: OpenAI's fine-tuning API (tests/tune/test_jobs.py runs it against a loopback one)" ;;
    "tune compare"*) readme_skip "tandem tune compare: needs the README's gpt-mini and support-ft backbones on OpenAI (tests/tune/test_compare.py runs it on scripted ones)" ;;
    "models pull"*) readme_skip "tandem models pull: downloads a GGUF from Hugging Face (tests/tune/test_models_cli.py pulls from a loopback server)" ;;
    *llama-cpp:*) readme_skip "tandem ... --model llama-cpp:...: needs GGUF weights (tests/tune/test_local_models.py runs a tiny one)" ;;
    # Against a model that only echoes, scenario expectations fail (exit 1); a usage error is exit 2.
    run\ *) command tandem "$@" || [ $? -eq 1 ] ;;
    # Started in the background (`&`): the worker replaces the subshell, so `kill %1` stops the worker itself.
    worker*) exec tandem "$@" ;;
    *) command tandem "$@" ;;
  esac
}
"""


@dataclass(frozen=True)
class Block:
    """One fenced block of a README."""

    readme: str
    line: int
    language: str
    text: str

    @property
    def first_line(self) -> str:
        return next((line for line in self.text.splitlines() if line.strip()), '')

    @property
    def id(self) -> str:
        return f'{self.readme}:{self.line}:{self.language or "text"}'


def readme_blocks(readme: str) -> list[Block]:
    """Every fenced block in `readme`, indented ones (inside list items) included, dedented."""
    blocks: list[Block] = []
    lines = (ROOT / readme).read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = re.fullmatch(r'( *)```(\w*)\s*', lines[index])
        index += 1
        if opening is None:
            continue
        indent, start, body = opening.group(1), index, list[str]()
        while not re.fullmatch(rf'{indent}```\s*', lines[index]):
            body.append(lines[index].removeprefix(indent))
            index += 1
        index += 1
        blocks.append(Block(readme, start, opening.group(2), '\n'.join(body) + '\n'))
    return blocks


@dataclass
class Sandbox:
    """Where one README's blocks run, and the servers they talk to."""

    root: Path
    model_server: FakeOpenAI
    redis_url: str
    env: dict[str, str]

    def substitute(self, text: str) -> str:
        """Point the README's example addresses at this sandbox's servers."""
        for example in ('http://127.0.0.1:8000/v1', 'http://127.0.0.1:11434/v1'):
            text = text.replace(example, self.model_server.url)
        text = text.replace('redis://redis.internal:6379/0', self.redis_url)
        return re.sub(r'--port 8000\b', lambda _: f'--port {free_port()}', text)


MODELS = ['Qwen2.5-3B-Instruct', 'Qwen/Qwen2.5-3B-Instruct', 'support-lora', 'support', 'gpt-4.1-mini']


@pytest.fixture(scope='module')
def sandboxes(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[dict[str, Sandbox]]:
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_server).flushdb()
    with FakeOpenAI(models=MODELS) as model_server:
        made: dict[str, Sandbox] = {}
        for readme in READMES:
            root = tmp_path_factory.mktemp('readme')
            shutil.copytree(ROOT / 'scenarios', root / 'scenarios')
            shutil.copytree(ROOT / 'deploy', root / 'deploy')
            (root / '.venv').symlink_to(BIN.parent)  # the checkout's venv, for `source .venv/bin/activate`
            (root / 'docs' / 'drafts').mkdir(parents=True)
            (root / 'docs' / 'refunds.md').write_text('# Refunds\n\nRefunds are paid within 14 days of a return.\n')
            (root / 'docs' / 'drafts' / 'wip.md').write_text('# Draft\n\nNot ready.\n')
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(('TANDEM_', 'OPENAI_', 'VIRTUAL_ENV'))},
                'PATH': f'{BIN}{os.pathsep}{os.environ.get("PATH", "")}',  # as `source .venv/bin/activate` does
                'TANDEM_HOME': str(root / 'home'),
                'TANDEM_REDIS_URL': redis_server,
                # A local server with a placeholder key: the usual setup, and what autodetect finds.
                'OPENAI_BASE_URL': model_server.url,
                'OPENAI_API_KEY': 'sk-readme-placeholder',
                'COLUMNS': '80',
            }
            made[readme] = Sandbox(root, model_server, redis_server, env)
        yield made


BLOCKS = [block for readme in READMES for block in readme_blocks(readme)]


def test_every_readme_has_blocks_and_the_python_ones_are_the_ones_pytest_examples_finds() -> None:
    assert {block.readme for block in BLOCKS} == set(READMES)
    found = {(str(example.path.relative_to(ROOT)), example.start_line) for example in _python_examples()}
    assert found == {(block.readme, block.line) for block in BLOCKS if block.language == 'python'}


def _python_examples() -> list[CodeExample]:
    return list(find_examples(*(ROOT / readme for readme in READMES)))


def _python_example(block: Block) -> CodeExample:
    return next(e for e in _python_examples() if e.start_line == block.line and e.path == ROOT / block.readme)


@pytest.mark.slow
@pytest.mark.parametrize('block', BLOCKS, ids=[block.id for block in BLOCKS])
def test_readme_block(
    block: Block, sandboxes: dict[str, Sandbox], monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    sandbox = sandboxes[block.readme]
    reason = NOT_COMMANDS.get((block.readme, block.first_line))
    if reason is not None:
        pytest.skip(f'not a command: {reason}')
    if block.language == 'python':
        evaluator = EvalExample(tmp_path=sandbox.root, pytest_request=request)
        # A block with top-level `await` leaves its setup to the reader, as pydantic-ai's docs do.
        loose = ['PLE1142', 'F704', 'F821'] if 'await ' in block.text and 'async def' not in block.text else None
        evaluator.set_config(line_length=120, quotes='single', target_version='py310', ruff_ignore=loose)
        evaluator.lint_ruff(_python_example(block))
    runner = {'bash': _run_bash, 'python': _run_python, 'toml': _run_toml, 'jinja': _run_jinja, 'yaml': _run_yaml}
    assert block.language in runner, (
        f'{block.id}: a {block.language or "plain"} block this test does not know how to run: run it here, '
        'or list it in NOT_COMMANDS with the reason'
    )
    for name, value in sandbox.env.items():
        monkeypatch.setenv(name, value)
    for name in [name for name in os.environ if name not in sandbox.env]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(sandbox.root)
    runner[block.language](block, sandbox)


def _run_bash(block: Block, sandbox: Sandbox) -> None:
    script = PRELUDE + sandbox.substitute(block.text)
    done = subprocess.run(
        ['/bin/bash', '-c', script],
        cwd=sandbox.root,
        env=sandbox.env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f'{block.id} failed ({done.returncode}):\n{output[-4000:]}'
    assert 'Traceback' not in output, output[-4000:]
    for skipped in re.findall(r'^readme: not run: (.*)$', done.stdout, flags=re.M):
        print(f'{block.id}: not run: {skipped}')


def _run_python(block: Block, sandbox: Sandbox) -> None:
    if block.first_line == 'from openai import OpenAI':
        _run_openai_client_example(block, sandbox)
    elif 'await run_suite(' in block.text:
        _run_scenarios_api_example(block, sandbox)
    elif 'StdioServerParameters(' in block.text:
        _run_mcp_client_example(block)
    elif 'FastAPI(' in block.text:
        _run_fastapi_example(block)
    elif 'output_type=' in block.text:
        _run_typed_answers_example(block)
    elif block.text.lstrip().startswith('from tandem.') and 'assert ' in block.text:
        _run_checking_example(block)
    else:
        pytest.fail(f'{block.id}: a Python block this test does not know how to check')


def _run_checking_example(block: Block) -> None:
    """A block that checks itself with `assert`: it runs as it is."""
    exec(compile(block.text, block.id, 'exec'), {'__name__': 'readme_example'})  # noqa: S102


def _run_mcp_client_example(block: Block) -> None:
    """The `mcp` SDK's client against `tandem mcp` over stdio, in the sandbox's environment; it prints the fact."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block.text, block.id, 'exec'), {'__name__': 'readme_mcp'})  # noqa: S102
    assert printed.getvalue() == 'The user prefers metric units.\n'


def _run_fastapi_example(block: Block) -> None:
    """The embedding example, with the README's own tandem.toml (written by the block before it)."""
    from fastapi.testclient import TestClient

    assert Path('tandem.toml').is_file(), 'the README shows its tandem.toml before this example'
    namespace: dict[str, Any] = {'__name__': 'readme_app'}
    exec(compile(block.text, block.id, 'exec'), namespace)  # noqa: S102 - running the README is the point
    with TestClient(namespace['app']) as client:
        response = client.post('/ask', params={'question': 'What is 2**20?', 'session': 'readme-1', 'user': 'ada'})
    assert response.status_code == 200, response.text
    assert response.json() == {'answer': 'You said: What is 2**20?', 'tools': [], 'tokens': response.json()['tokens']}


def _run_typed_answers_example(block: Block) -> None:
    """The Python API's typed answers, on the sandbox's model, which fills every schema with examples."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block.text, block.id, 'exec'), {'__name__': 'readme_typed'})  # noqa: S102
    lines = printed.getvalue().splitlines()
    assert lines[0] == '1.5 {"number":"example","total":1.5} 0', lines
    assert lines[-1] == "whole: number='example' total=1.5", lines
    assert any(line.startswith('so far: ') for line in lines[1:-1]), lines


def _run_openai_client_example(block: Block, sandbox: Sandbox) -> None:
    """The openai SDK against `tandem serve`, started as the block before it says."""
    env = {**sandbox.env, 'TANDEM_API_KEYS': 'KEY:acme'}
    with served(lambda port: [str(BIN / 'tandem'), 'serve', '--port', str(port)], env=env, cwd=sandbox.root) as server:
        namespace: dict[str, Any] = {}
        source = block.text.replace('http://127.0.0.1:8000', server.base_url)
        exec(compile(source, block.id, 'exec'), namespace)  # noqa: S102
    assert namespace['reply'].choices[0].message.content == 'You said: What is 2**20?'
    parsed = namespace['invoice'].choices[0].message.parsed
    assert (type(parsed).__name__, parsed.number, parsed.total) == ('Invoice', 'example', 1.5)


def _run_scenarios_api_example(block: Block, sandbox: Sandbox) -> None:
    """The Python API of `tandem run`, with the names the block leaves to the reader."""
    from tandem.agent.backbones.base import backbone_from_config
    from tandem.agent.core.config import BackboneConfig, load_settings
    from tandem.memory.connection import connect

    def backbone(name: str) -> Any:
        return backbone_from_config(
            name, BackboneConfig(model='openai-chat:support', base_url=sandbox.model_server.url)
        )

    async def main() -> None:
        redis = await connect(sandbox.redis_url, home=sandbox.root / 'home')
        namespace: dict[str, Any] = {
            'settings': load_settings(),
            'redis': redis,
            'base': backbone('base'),
            'tuned': backbone('tuned'),
        }
        try:
            code = compile(block.text, block.id, 'exec', flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            await eval(code, namespace)  # noqa: S307
        finally:
            await redis.aclose()
        report = namespace['report']
        assert len(report.cells) == 2 * 2 * 2  # backbones × prompts × (full, rag off)

    asyncio.run(main())


def _run_toml(block: Block, sandbox: Sandbox) -> None:
    data = tomllib.loads(block.text)
    if block.first_line == '# tandem.toml':
        from tandem.agent.core.config import load_settings

        Path('tandem.toml').write_text(sandbox.substitute(block.text))
        settings = load_settings()
        assert settings.backbone == 'local' and set(settings.backbones) >= {'local', 'support-lora', 'tuned'}
    elif block.first_line == '# mcp.toml (or add these tables to tandem.toml)':
        from tandem.agent.core.config import load_settings

        Path('mcp.toml').write_text(block.text)
        os.environ['TANDEM_CONFIG'] = 'mcp.toml'
        try:
            assert sorted(load_settings().mcp) == ['fetch', 'github']
        finally:
            del os.environ['TANDEM_CONFIG']
    elif block.first_line == "# your plugin's pyproject.toml":
        plugin = tomllib.loads((ROOT / 'tests/plugins/tandem_example_plugin/pyproject.toml').read_text())
        assert data['project']['entry-points'] == plugin['project']['entry-points']
    elif '[[server.api_keys]]' in block.text:
        from tandem.agent.core.config import load_settings
        from tandem.agent.server.auth import load_api_keys

        digest = hashlib.sha256(b'sk-readme').hexdigest()
        config = Path('keys.toml')
        config.write_text(block.text.replace('"…"', f'"{digest}"'))
        os.environ['TANDEM_CONFIG'] = str(config)
        try:
            assert load_api_keys(load_settings())
        finally:
            del os.environ['TANDEM_CONFIG']
    else:
        pytest.fail(f'{block.id}: a TOML block this test does not know how to check')


def _run_jinja(block: Block, sandbox: Sandbox) -> None:
    from tandem.agent.core.prompts import PromptLibrary

    folder = sandbox.root / 'my-prompts' / 'assistant'
    folder.mkdir(parents=True, exist_ok=True)
    (folder / '2.md.j2').write_text(block.text)
    template = PromptLibrary([sandbox.root / 'my-prompts']).get('assistant@2')
    assert template.render({'date': '2026-12-06'}).startswith('You are Tandem. Today is 2026-12-06.')


def _run_yaml(block: Block, sandbox: Sandbox) -> None:
    from tandem.agent.scenarios import load_scenarios

    folder = sandbox.root / 'my-scenarios'
    (folder / 'docs').mkdir(parents=True, exist_ok=True)
    (folder / 'docs' / 'handbook.md').write_text('# Handbook\n')
    (folder / 'example.yaml').write_text(block.text)
    [scenario] = load_scenarios([folder])
    assert scenario.name == re.search(r'^name: (\S+)', block.text, flags=re.M)[1]  # pyright: ignore[reportOptionalSubscript]


def test_the_compose_image_builds_from_paths_that_exist() -> None:
    """What `docker compose up --build` needs from the checkout, checked without Docker."""
    import yaml

    compose = yaml.safe_load((ROOT / 'deploy' / 'docker-compose.yml').read_text())
    dockerfile: str = compose['services']['tandem']['build']['dockerfile_inline']
    copied = [part for line in dockerfile.splitlines() if line.startswith('COPY ') for part in line.split()[1:-1]]
    assert copied and all((ROOT / path).exists() for path in copied), copied
    command = next(line for line in dockerfile.splitlines() if line.startswith('CMD '))
    assert '"tandem", "serve"' in command

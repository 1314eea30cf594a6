"""Tandem installs under one import name, `tandem`, so it never collides with a project's own packages.

The folders agent/, tools/, memory/ and prompts/ sit at the top of the repository and install as
`tandem.agent`, `tandem.tools`, `tandem.memory` and `tandem.prompts` (setuptools' `package-dir`).
These tests build the wheel from a clean copy of the tree and run it the way users do: a service
with its own `agent`, `tools` and `memory` packages embeds Tandem, from the wheel and from the
editable install that `make chat` and `make test` make.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.readme.test_readme import BLOCKS
from tests.support.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {'agent': 'tandem/agent', 'tools': 'tandem/tools', 'memory': 'tandem/memory', 'prompts': 'tandem/prompts'}
SITE_PACKAGES = sysconfig.get_paths()['purelib']

pytestmark = pytest.mark.slow


def _tracked_files() -> list[str]:
    listed = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [name for name in listed.splitlines() if (ROOT / name).is_file()]


@pytest.fixture(scope='module')
def unpacked_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel, built by the PEP 517 backend from a copy of the tracked files, and unpacked."""
    source = tmp_path_factory.mktemp('source')
    for name in _tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp('dist')
    build = f'from setuptools.build_meta import build_wheel; print(build_wheel({str(out)!r}))'
    subprocess.run([sys.executable, '-c', build], cwd=source, check=True, capture_output=True)
    wheel = next(out.glob('tandem-*.whl'))
    unpacked = out / 'site'
    zipfile.ZipFile(wheel).extractall(unpacked)
    yield unpacked


def test_the_wheel_holds_every_module_and_prompt_under_tandem_and_nothing_at_the_top(unpacked_wheel: Path) -> None:
    expected = {
        f'{PACKAGES[name.split("/", 1)[0]]}/{name.split("/", 1)[1]}'
        for name in _tracked_files()
        if name.split('/', 1)[0] in PACKAGES and name.endswith(('.py', '.md.j2'))
    }
    shipped = {
        str(path.relative_to(unpacked_wheel))
        for path in unpacked_wheel.rglob('*')
        if path.is_file() and '.dist-info' not in str(path)
    }
    assert shipped == expected
    assert {path.name for path in unpacked_wheel.iterdir()} == {'tandem', 'tandem-0.1.0.dist-info'}
    assert not (unpacked_wheel / 'tandem' / '__init__.py').exists(), '`tandem` is a namespace: plugins may join it'


def test_every_entry_point_names_a_tandem_module() -> None:
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    targets = [project['scripts']['tandem']]
    for group in project['entry-points'].values():
        targets.extend(group.values())
    assert targets and all(target.startswith('tandem.') for target in targets), targets


def _run_without_site(code: str, wheel: Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run `code` with the wheel on the path and the editable install out of sight.

    `-S` skips site-packages' .pth files (the editable install's import hook); the dependencies
    stay importable because site-packages itself is put on PYTHONPATH, after the wheel.
    """
    result = subprocess.run(
        [sys.executable, '-S', '-c', code],
        cwd=cwd,
        env={**(env or {}), 'PYTHONPATH': os.pathsep.join([str(wheel), SITE_PACKAGES])},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_bundled_prompts_load_from_the_wheel(unpacked_wheel: Path, tmp_path: Path) -> None:
    code = (
        'from tandem.agent.core.prompts import PromptLibrary, bundled_prompts_dir\n'
        'print(bundled_prompts_dir()); print(PromptLibrary.default().get("assistant").ref)\n'
    )
    location, ref = _run_without_site(code, unpacked_wheel, tmp_path).split()
    assert Path(location) == unpacked_wheel / 'tandem' / 'prompts' and ref == 'assistant@1'


# A service of its own, with packages named like Tandem's folders. `tools` has no `registry`
# module: before the move, `from agent import Assistant` failed here with `No module named 'tools.registry'`.
SERVICE_PACKAGES = {
    'agent/__init__.py': "WHO = 'the service'\n",
    'tools/__init__.py': "WHO = 'the service'\n",
    'memory/__init__.py': "WHO = 'the service'\n",
}
SERVICE_CHECK = """
from fastapi.testclient import TestClient

import agent, memory, tools

with TestClient(app) as client:
    response = client.post('/ask', params={'question': 'hi', 'session': 's1', 'user': 'ada'})
assert response.status_code == 200, response.text
print(response.json()['answer'])
print(agent.WHO, tools.WHO, memory.WHO, sep=', ')
"""


@pytest.fixture
def service(tmp_path: Path, redis_url: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A project with its own agent/tools/memory, running the README's embedding example as its app."""
    (embedding_example,) = [block.text for block in BLOCKS if block.language == 'python' and 'FastAPI(' in block.text]
    for name, text in SERVICE_PACKAGES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / 'service.py').write_text(embedding_example + SERVICE_CHECK)
    with FakeOpenAI(models=['support']) as model_server:
        env = {
            'PATH': os.environ.get('PATH', ''),
            'TANDEM_HOME': str(tmp_path / 'home'),
            'TANDEM_REDIS_URL': redis_url,
            'OPENAI_BASE_URL': model_server.url,
            'OPENAI_API_KEY': 'sk-placeholder',
        }
        yield tmp_path, env


def test_a_service_with_its_own_agent_tools_and_memory_embeds_the_installed_wheel(
    service: tuple[Path, dict[str, str]], unpacked_wheel: Path
) -> None:
    project, env = service
    out = _run_without_site((project / 'service.py').read_text(), unpacked_wheel, project, env)
    assert out.splitlines() == ['You said: hi', 'the service, the service, the service']


def test_a_service_with_its_own_agent_tools_and_memory_embeds_the_editable_install(
    service: tuple[Path, dict[str, str]],
) -> None:
    project, env = service
    result = subprocess.run([sys.executable, 'service.py'], cwd=project, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['You said: hi', 'the service, the service, the service']

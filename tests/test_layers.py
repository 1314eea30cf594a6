"""The import rule: layers are folders, and imports point down, never up, with no cycles.

    core  ←  memory  ←  tools  ←  backbones  ←  turn  ←  front ends

A module may import its own layer and the layers below it. Type-only imports (under
`TYPE_CHECKING`) count too: they are dependencies all the same. The front ends are ordered among
themselves, the Python API lowest and the command line on top, which imports all the others.
Imports inside functions count as well, so a cycle cannot hide in a late import.

When this test fails, it names the file, the line and the two layers: move the code that is
needed down to the layer that needs it, or pass it in from above.
"""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ('agent', 'tools', 'memory')

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ('core', ('tandem.agent.core',)),
    ('memory', ('tandem.memory',)),
    ('tools', ('tandem.tools',)),
    ('backbones', ('tandem.agent.backbones',)),
    ('turn', ('tandem.agent.turn',)),
    ('api', ('tandem.agent.api',)),
    ('scenarios', ('tandem.agent.scenarios',)),
    ('tune', ('tandem.agent.tune',)),
    ('server', ('tandem.agent.server',)),
    ('cli', ('tandem.agent.cli', 'tandem.agent.__main__')),
    # The package's face: `from tandem.agent import Assistant`, for users; nothing inside imports it.
    ('face', ()),
)
"""Lowest first: (layer, the module prefixes it holds)."""
FACE = 'tandem.agent'
"""The face is this one module, not a prefix: a new module directly in agent/ belongs to no layer."""


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    path: str
    line: int


def layer_of(module: str) -> int:
    """The index in `LAYERS` of the longest prefix that holds `module`."""
    if module == FACE:
        return len(LAYERS) - 1
    matches = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + '.')
    ]
    assert matches, f'{module} is in no layer: add its folder to LAYERS'
    return max(matches)[1]


def modules(root: Path) -> dict[str, Path]:
    """Every module of the library under its import name, e.g. `tandem.agent.turn.run`."""
    listed = subprocess.run(['git', 'ls-files', *FOLDERS], cwd=root, capture_output=True, text=True, check=True)
    found: dict[str, Path] = {}
    for name in listed.stdout.split():
        path = root / name
        if name.endswith('.py') and path.is_file():
            parts = name.removesuffix('.py').split('/')
            found['.'.join(['tandem', *(parts[:-1] if parts[-1] == '__init__' else parts)])] = path
    return found


def imported(path: Path, package: str, known: Collection[str] = ()) -> Iterator[tuple[str, int]]:
    """The absolute names of the modules a file imports, with their lines, wherever the import stands.

    `from a.b import c` names `a.b.c` when that is one of the `known` modules, else `a.b`.
    """
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                base = '.'.join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
            for alias in node.names:
                yield (f'{base}.{alias.name}' if f'{base}.{alias.name}' in known else base), node.lineno


def imports(known: dict[str, Path], root: Path) -> Iterator[Import]:
    """Every import of a Tandem module by another: at the top, in functions, and under TYPE_CHECKING."""
    for source, path in known.items():
        package = source if path.name == '__init__.py' else source.rpartition('.')[0]
        for target, line in imported(path, package, known):
            if target.startswith('tandem.') and target != source:
                yield Import(source, target, str(path.relative_to(root)), line)


def upward(found: list[Import]) -> list[str]:
    return [
        f'{i.path}:{i.line}: {i.source} ({LAYERS[layer_of(i.source)][0]}) imports '
        f'{i.target} ({LAYERS[layer_of(i.target)][0]})'
        for i in found
        if layer_of(i.target) > layer_of(i.source)
    ]


def cycles(found: list[Import]) -> list[list[str]]:
    """The strongly connected groups of modules (Tarjan), each a cycle of imports."""
    graph: dict[str, set[str]] = {}
    for i in found:
        graph.setdefault(i.source, set()).add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


@pytest.fixture(scope='module')
def library() -> tuple[dict[str, Path], list[Import]]:
    known = modules(ROOT)
    return known, list(imports(known, ROOT))


def test_no_file_imports_the_bare_top_level_names() -> None:
    """`import agent` or `from tools.x import y` would load a user's package of that name, or fail."""
    listed = subprocess.run(['git', 'ls-files', '*.py'], cwd=ROOT, capture_output=True, text=True, check=True)
    offenders = [
        f'{name}:{line}: {module}'
        for name in listed.stdout.split()
        if not name.startswith('tests/plugins/') and (ROOT / name).is_file()
        for module, line in imported(ROOT / name, package='')
        if module.split('.')[0] in FOLDERS
    ]
    assert offenders == []


def test_every_module_is_in_a_layer_and_every_layer_has_modules(library: tuple[dict[str, Path], list[Import]]) -> None:
    known, _ = library
    layers = {layer_of(module) for module in known}
    assert layers == set(range(len(LAYERS)))


def test_imports_point_down_the_layers(library: tuple[dict[str, Path], list[Import]]) -> None:
    _, found = library
    assert upward(found) == []


def test_no_module_imports_another_that_imports_it_back(library: tuple[dict[str, Path], list[Import]]) -> None:
    _, found = library
    assert cycles(found) == []


def test_an_upward_import_and_a_cycle_are_caught(tmp_path: Path) -> None:
    """The rule itself can fail: a tree with a memory module that imports the turn layer."""
    for name, text in {
        'agent/core/errors.py': '',
        'agent/turn/run.py': 'from tandem.memory import store\n',
        'memory/store.py': 'def f():\n    from tandem.agent.turn.run import x\n',
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    subprocess.run(['git', 'init', '-q'], cwd=tmp_path, check=True)
    subprocess.run(['git', 'add', '.'], cwd=tmp_path, check=True)
    known = modules(tmp_path)
    found = list(imports(known, tmp_path))
    assert upward(found) == ['memory/store.py:2: tandem.memory.store (memory) imports tandem.agent.turn.run (turn)']
    assert cycles(found) == [['tandem.agent.turn.run', 'tandem.memory.store']]
    with pytest.raises(AssertionError, match=r'tandem\.agent\.stray is in no layer'):
        layer_of('tandem.agent.stray')


@pytest.mark.parametrize(
    ('owner', 'mechanism'),
    [
        ('tandem.agent.core.log', 'logging.getLogger('),  # one logging style: structlog events from get_logger
        ('tandem.agent.core.files', 'tempfile.mkstemp('),  # one atomic write: write_atomically
        ('tandem.agent.core.tokens', 'import tiktoken'),  # one token counter: token_counter
    ],
)
def test_each_shared_mechanism_lives_in_one_module(
    library: tuple[dict[str, Path], list[Import]], owner: str, mechanism: str
) -> None:
    found, _ = library
    users = sorted(name for name, path in found.items() if mechanism in path.read_text(encoding='utf-8'))
    assert users == [owner]

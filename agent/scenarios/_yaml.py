"""YAML with line numbers: the data of a file, and where each value of it was written.

`yaml.safe_load` forgets positions, so scenario files are composed first (`yaml.compose` keeps a
mark on every node), checked for duplicate keys (which PyYAML would silently collapse), and only
then constructed. `SourceMap.locate` turns a pydantic error location such as
`('turns', 1, 'expect', 'max_tool_calls')` into the line and column of that value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    """A position in a file, 1-based."""

    line: int
    column: int


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file, where it is."""

    path: Path
    line: int
    column: int
    where: str
    """The dotted path of the value, e.g. `turns[1].expect.max_tool_calls`; empty for the whole file."""
    message: str

    def __str__(self) -> str:
        where = f' {self.where}:' if self.where else ''
        return f'{self.path}:{self.line}:{self.column}:{where} {self.message}'


@dataclass
class SourceMap:
    """Where each value of a YAML document was written: key and value marks by location."""

    path: Path
    values: dict[Loc, Mark] = field(default_factory=dict[Loc, Mark])
    keys: dict[Loc, Mark] = field(default_factory=dict[Loc, Mark])
    kinds: dict[Loc, str] = field(default_factory=dict[Loc, str])
    """`mapping`, `sequence` or `scalar`, by location."""

    def locate(self, loc: Sequence[str | int]) -> tuple[Mark, Loc, Loc]:
        """The mark of the deepest part of `loc` that exists in the file.

        Returns:
            The mark (of the key, when the value sits under a key), the part of `loc` found in the
            file, and the rest of it.
        """
        found: Loc = ()
        for part in loc:
            candidate = (*found, part)
            if candidate not in self.values:
                # pydantic reports mapping keys as strings, sequence indexes as ints; YAML may differ.
                alternative = _other_form(part)
                if alternative is None or (*found, alternative) not in self.values:
                    break
                candidate = (*found, alternative)
            found = candidate
        rest = tuple(loc[len(found) :])
        mark = self.keys.get(found) or self.values.get(found) or Mark(1, 1)
        return mark, found, rest

    def line_of(self, loc: Sequence[str | int]) -> int:
        """The line of the deepest part of `loc` that exists in the file."""
        return self.locate(loc)[0].line


def _other_form(part: str | int) -> str | int | None:
    if isinstance(part, int):
        return str(part)
    return int(part) if part.isdigit() else None


def dotted(loc: Sequence[str | int]) -> str:
    """`('turns', 1, 'expect')` as `turns[1].expect`."""
    text = ''
    for part in loc:
        text += f'[{part}]' if isinstance(part, int) else (f'.{part}' if text else str(part))
    return text


class YamlFileError(Exception):
    """A file that is not valid YAML, or has duplicate keys; `problems` says where."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__('\n'.join(str(problem) for problem in problems))
        self.problems = problems


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def _walk(node: yaml.Node, loc: Loc, source: SourceMap, problems: list[Problem], seen: set[int]) -> None:
    source.values.setdefault(loc, _mark(node))
    if id(node) in seen:  # an alias of a node already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        source.kinds[loc] = 'mapping'
        first: dict[str, Mark] = {}
        for key_node, value_node in node.value:  # pyright: ignore[reportUnknownVariableType]
            assert isinstance(key_node, yaml.Node) and isinstance(value_node, yaml.Node)
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = str(key_node.value)  # pyright: ignore[reportUnknownMemberType,reportUnknownArgumentType]
            if key == '<<' and key_node.tag == 'tag:yaml.org,2002:merge':
                continue
            if key in first:
                problems.append(
                    Problem(
                        source.path,
                        _mark(key_node).line,
                        _mark(key_node).column,
                        dotted((*loc, key)),
                        f'duplicate key {key!r} (first written on line {first[key].line})',
                    )
                )
                continue
            first[key] = _mark(key_node)
            source.keys[(*loc, key)] = _mark(key_node)
            _walk(value_node, (*loc, key), source, problems, seen)
    elif isinstance(node, yaml.SequenceNode):
        source.kinds[loc] = 'sequence'
        for index, item in enumerate(node.value):  # pyright: ignore[reportUnknownVariableType,reportUnknownArgumentType]
            assert isinstance(item, yaml.Node)
            _walk(item, (*loc, index), source, problems, seen)
    else:
        source.kinds[loc] = 'scalar'


def load_yaml(path: Path, text: str | None = None) -> tuple[Any, SourceMap]:
    """Read a one-document YAML file, with the position of every value.

    Raises:
        YamlFileError: A syntax error, more than one document, or a duplicate key.
        OSError: The file cannot be read.
    """
    if text is None:
        text = path.read_text(encoding='utf-8')
    source = SourceMap(path)
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            reason = error.problem or error.context or 'invalid YAML'
            if 'expected a single document' in (error.context or ''):
                reason = 'one scenario per file: remove the second document (the `---` line)'
            raise YamlFileError([Problem(path, line, column, '', f'YAML syntax: {reason}')]) from error
        except yaml.YAMLError as error:
            raise YamlFileError([Problem(path, 1, 1, '', f'YAML: {error}')]) from error
        if node is None:
            return None, source
        problems: list[Problem] = []
        _walk(node, (), source, problems, set())
        if problems:
            raise YamlFileError(problems)
        try:
            data = cast(Any, loader.construct_document(node))  # pyright: ignore[reportUnknownMemberType]
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            raise YamlFileError([Problem(path, line, column, '', f'YAML: {error.problem or error}')]) from error
    finally:
        loader.dispose()  # pyright: ignore[reportUnknownMemberType]
    return data, source

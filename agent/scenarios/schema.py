"""The scenario file format: pydantic models, and loading that points at the file and line of a mistake.

A scenario is one YAML file (see `scenarios/README.md` for the documented schema):

```yaml
name: calculator
description: Arithmetic goes to the calculator, and the answer carries its exact result.
tags: [tools, calc]
setup:
  tools: [calc]
turns:
  - user: What is 17 * 23?
    expect:
      tools: [{name: calculate, args: {expression: {regex: '17\\s*\\*\\s*23'}}}]
      contains: '391'
      max_tool_calls: 1
```

Every mistake is reported as `path:line:column: where: what`, e.g.
`scenarios/calc.yaml:9:7: turns[0].expect.max_tool_call: unknown key; did you mean 'max_tool_calls'?`.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, cast, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tandem.agent.core.config import Settings
from tandem.agent.core.errors import TandemError
from tandem.agent.scenarios._yaml import Loc, Problem, SourceMap, YamlFileError, dotted, load_yaml
from tandem.memory.keys import validate_id

__all__ = [
    'ArgMatch',
    'Document',
    'Expectations',
    'Fact',
    'FieldMatch',
    'Judge',
    'OutputExpectation',
    'Scenario',
    'ScenarioFileError',
    'Setup',
    'ToolCall',
    'Turn',
    'discover_files',
    'load_scenario',
    'load_scenarios',
    'select_scenarios',
]

SUFFIXES = ('.yaml', '.yml')
"""What a scenario file is called; directories are searched recursively for these."""

_TAG_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63}')
_FIXED_SETTINGS = {
    'home': 'it is where the run keeps its data',
    'redis_url': 'every scenario gets its own namespace on the Redis of the run',
    'tenant': 'every scenario run gets its own tenant',
    'user': 'use setup.user',
    'backbone': 'the backbone is a dimension of the matrix: use `tandem run --backbone`',
    'backbones': 'configure backbones in tandem.toml',
    'prompt': 'use setup.prompt, or `tandem run --prompt`',
    'prompts_dir': 'set TANDEM_PROMPTS_DIR for the run',
    'tools': 'use setup.tools',
    'log_level': 'set it for the whole run',
    'server': 'scenarios do not run the HTTP service',
}


class ScenarioFileError(TandemError):
    """One or more scenario files are invalid; every problem names its file, line and column."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__('\n'.join(str(problem) for problem in self.problems))


def _compile(value: Any) -> re.Pattern[str]:
    if isinstance(value, re.Pattern):
        return cast(re.Pattern[str], value)
    if not isinstance(value, str):
        raise ValueError('a regular expression must be a string')
    try:
        return re.compile(value)
    except re.error as error:
        raise ValueError(f'invalid regular expression {value!r}: {error}') from None


Regex = Annotated[
    re.Pattern[str],
    BeforeValidator(_compile),
    PlainSerializer(lambda pattern: pattern.pattern, return_type=str),
]
"""A Python regular expression (`re.search`), compiled when the file is loaded."""


def _tag(value: str) -> str:
    if not _TAG_PATTERN.fullmatch(value):
        raise ValueError(f'invalid tag {value!r}: use letters, digits, _, . or - (at most 64)')
    return value


Tag = Annotated[str, AfterValidator(_tag)]
"""A word to select scenarios by with `tandem run -k TAG`."""


def _as_list(value: Any) -> Any:
    """A single item where a list is expected, as a one-item list."""
    return [value] if isinstance(value, str | dict) else value


class _Model(BaseModel):
    model_config = ConfigDict(extra='forbid', frozen=True)


class ArgMatch(_Model):
    """How one argument of a tool call must look. Exactly one of the three is given.

    In a file, a plain value means `equals`: `{expression: '2**100'}`; a mapping with one of the
    keys below chooses the comparison: `{expression: {regex: '2\\s*\\*\\*\\s*100'}}`.
    """

    equals: Any = None
    """The value; scalars also match when their text is the same (`5` matches `'5'`)."""
    contains: str | None = None
    """A substring of the value's text, case-insensitive."""
    regex: Regex | None = None
    """A regular expression found in the value's text (`re.search`)."""

    _KEYS: ClassVar[frozenset[str]] = frozenset({'equals', 'contains', 'regex'})
    """The keys of a mapping that chooses the comparison; any other value means `equals`."""
    _MOST_KEYS: ClassVar[int] = 1

    @model_validator(mode='before')
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            mapping = cast(dict[str, Any], value)
            if 1 <= len(mapping) <= cls._MOST_KEYS and set(mapping) <= cls._KEYS:
                return mapping
        shorthand: dict[str, Any] = {'equals': value}
        return shorthand

    def describe(self) -> str:
        """The comparison, as shown in a failure: `='2**100'`, `~'17'`, `=~/\\d+/`."""
        if self.regex is not None:
            return f'=~/{self.regex.pattern}/'
        if self.contains is not None:
            return f' containing {self.contains!r}'
        return f'={self.equals!r}'


class ToolCall(_Model):
    """A tool the model must call in the turn, and optionally how its arguments must look; or, with
    `any_of`, one of several such calls (`{any_of: [web_search, search_knowledge]}`)."""

    name: str | None = Field(default=None, min_length=1)
    args: dict[str, ArgMatch] = Field(default_factory=dict[str, ArgMatch])
    """Only the arguments named here are compared; others may be anything."""
    any_of: list[ToolCall] = Field(default_factory=list['ToolCall'])
    """Alternatives: the check holds when any of them was called."""

    @model_validator(mode='before')
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {'name': value} if isinstance(value, str) else value

    @model_validator(mode='after')
    def _name_or_alternatives(self) -> ToolCall:
        if (self.name is None) == (not self.any_of):
            raise ValueError('name one tool, or give alternatives with any_of (not both)')
        if self.any_of and self.args:
            raise ValueError('with any_of, give args on each alternative')
        return self

    @property
    def names(self) -> list[str]:
        """The tool names this expectation accepts."""
        return [self.name] if self.name is not None else [name for option in self.any_of for name in option.names]

    def describe(self) -> str:
        """`calculate(expression=~/17/)`, or `any of web_search, search_knowledge`, as shown in reports."""
        if self.any_of:
            return 'any of ' + ', '.join(option.describe() for option in self.any_of)
        args = ', '.join(f'{name}{match.describe()}' for name, match in self.args.items())
        return f'{self.name}({args})' if args else str(self.name)


class ErrorExpectation(_Model):
    """How the clean error that must stop the turn reads: `contains` (case-insensitive) or `regex`.

    In a file, a plain string means `contains`: `error: 'tool-call limit'`.
    """

    contains: str | None = None
    regex: Regex | None = None

    @model_validator(mode='before')
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {'contains': value} if isinstance(value, str) else value

    @model_validator(mode='after')
    def _one(self) -> ErrorExpectation:
        if (self.contains is None) == (self.regex is None):
            raise ValueError('give the error as contains or regex (one of them)')
        return self

    def matches(self, message: str) -> bool:
        """Whether an error message reads as expected."""
        if self.regex is not None:
            return self.regex.search(message) is not None
        return str(self.contains).lower() in message.lower()

    def describe(self) -> str:
        """`stops with an error containing 'limit'`."""
        if self.regex is not None:
            return f'stops with an error matching /{self.regex.pattern}/'
        return f'stops with an error containing {self.contains!r}'


class FieldMatch(ArgMatch):
    """How one field of a typed answer must look: as a tool argument (`equals`, `contains`, `regex`), or a
    number in a range (`min`, `max`, either or both)."""

    min: float | None = None
    max: float | None = None

    _KEYS: ClassVar[frozenset[str]] = frozenset({'equals', 'contains', 'regex', 'min', 'max'})
    _MOST_KEYS: ClassVar[int] = 2  # min and max together

    @model_validator(mode='after')
    def _one_comparison(self) -> FieldMatch:
        ranged = self.min is not None or self.max is not None
        if ranged and (self.contains is not None or self.regex is not None or self.equals is not None):
            raise ValueError('compare a field either by range (min, max) or by equals, contains or regex')
        return self

    def describe(self) -> str:
        """The comparison, as shown in a failure: `='ACME'`, ` in [10, 20]`, ` >= 0`."""
        if self.min is not None and self.max is not None:
            return f' in [{self.min:g}, {self.max:g}]'
        if self.min is not None:
            return f' >= {self.min:g}'
        if self.max is not None:
            return f' <= {self.max:g}'
        return super().describe()


class OutputExpectation(_Model):
    """A typed answer: the turn asks for JSON that fits `schema`, and its `fields` are checked."""

    model_config = ConfigDict(populate_by_name=True)

    schema_: dict[str, Any] | str = Field(alias='schema')
    """A JSON Schema (a mapping, or a `.json` file relative to the scenario file), or llm's concise form,
    `'number str, total float'`."""
    fields: dict[str, FieldMatch] = Field(default_factory=dict[str, FieldMatch])
    """Fields by dotted path (`lines.0.sku`), each compared as a tool argument is, or by range."""

    @field_validator('schema_', mode='after')
    @classmethod
    def _schema(cls, value: dict[str, Any] | str, info: ValidationInfo) -> dict[str, Any]:
        from tandem.agent.turn.output import OutputSchemaError, load_schema, schema_type

        context = cast(dict[str, Any], info.context or {})
        base = cast(Path | None, context.get('base_dir'))
        try:
            schema = load_schema(value, base=base) if isinstance(value, str) else dict(value)
            schema_type(schema)
        except OutputSchemaError as error:
            raise ValueError(str(error)) from None
        return schema

    @property
    def json_schema(self) -> dict[str, Any]:
        """The schema the turn asks for, as a JSON Schema (a concise form or a file, read)."""
        return cast(dict[str, Any], self.schema_)


class Judge(_Model):
    """An LLM-judge rubric (pydantic-evals' `LLMJudge`): a statement that must be true of the answer."""

    rubric: str = Field(min_length=1)
    backbone: str | None = None
    """The judge's backbone (a name or model string); else `tandem run --judge`, else the backbone under test."""
    include_input: bool = True
    """Whether the judge also sees the user's message."""

    @model_validator(mode='before')
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {'rubric': value} if isinstance(value, str) else value


class StateExpectation(_Model):
    """What must be stored after the turn (once its background memory work is done)."""

    user: str | None = None
    """Whose memory; default: the user the turn ran as."""
    facts_contain: list[str] = Field(default_factory=list[str])
    """Texts that some stored fact must contain, case-insensitive."""
    facts_not_contain: list[str] = Field(default_factory=list[str])
    """Texts that no stored fact may contain, case-insensitive."""
    documents: list[str] = Field(default_factory=list[str])
    """Sources that must exist in the tenant's knowledge base (`knowledge.default_kb`)."""

    _lists = field_validator('facts_contain', 'facts_not_contain', 'documents', mode='before')(_as_list)


class Expectations(_Model):
    """What must hold after one turn. Every item is a separate check in the report."""

    tools: list[ToolCall] = Field(default_factory=list[ToolCall])
    """Tools that must be called (each by at least one call), with optional argument matching."""
    tools_not_called: list[str] = Field(default_factory=list[str])
    """Tools that must not be called, not even as an attempt the approval policy denied."""
    contains: list[str] = Field(default_factory=list[str])
    """Texts the answer must contain, case-insensitive."""
    not_contains: list[str] = Field(default_factory=list[str])
    """Texts the answer must not contain, case-insensitive."""
    regex: list[Regex] = Field(default_factory=list[Regex])
    """Regular expressions the answer must match (`re.search`; add `(?i)` to ignore case)."""
    max_tool_calls: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    """Input plus output tokens of the whole turn, over all its model requests."""
    judge: Judge | None = None
    output: OutputExpectation | None = None
    """Ask for a typed answer that fits a schema, and check its fields."""
    error: ErrorExpectation | None = None
    """The turn must stop with a clean error that reads so (a limit that must stop it); the run goes on."""
    completes: bool | None = None
    """`true`: the turn must finish; an error is then a failed check of the turn, not the run's error."""
    max_latency_ms: float | None = Field(default=None, gt=0)
    """Wall time of the turn, model requests and tools included."""
    state: StateExpectation | None = None
    """Facts stored (or not) and documents present after the turn."""

    _lists = field_validator('tools', 'tools_not_called', 'contains', 'not_contains', 'regex', mode='before')(_as_list)

    @model_validator(mode='after')
    def _error_or_answer(self) -> Expectations:
        if self.error is not None and self.completes:
            raise ValueError('a turn cannot both stop with an error and complete: drop error or completes')
        answered = self.tools or self.contains or self.regex or self.judge or self.output
        if self.error is not None and answered:
            raise ValueError(
                'a turn that must stop with an error has no answer to check: drop error, or the answer checks'
            )
        return self


class Turn(_Model):
    """One user message, and what must hold after the assistant's answer."""

    user: str = Field(min_length=1)
    """What the user says."""
    new_session: bool = False
    """Start a new session (same user) before this turn: only long-term memory carries over."""
    as_user: str | None = None
    """Run this turn as another user (one of `setup.other_users`), in a session of their own."""
    expect: Expectations = Field(default_factory=Expectations)

    @field_validator('as_user')
    @classmethod
    def _user_id(cls, value: str | None) -> str | None:
        return None if value is None else validate_id('user', value)


class Document(_Model):
    """A document ingested into the run's knowledge base (`knowledge.default_kb`) before the first turn."""

    path: Path | None = None
    """A file, relative to the scenario file."""
    text: str | None = None
    """Inline content, instead of `path`."""
    title: str | None = None
    """For inline text: the title (else the first heading or line)."""
    kind: Literal['markdown', 'text', 'html'] = 'markdown'
    """For inline text: how to read it."""

    @model_validator(mode='before')
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {'path': value} if isinstance(value, str) else value

    @model_validator(mode='after')
    def _one_source(self, info: ValidationInfo) -> Document:
        if (self.path is None) == (self.text is None):
            raise ValueError('give a document either a `path` or inline `text`')
        if self.path is not None:
            if self.title is not None:
                raise ValueError('`title` is for inline `text`; a file has its own')
            context = cast(dict[str, Any], info.context or {})
            base = cast(Path | None, context.get('base_dir'))
            resolved = self.path if self.path.is_absolute() or base is None else (base / self.path)
            if not resolved.is_file():
                where = f' (paths are relative to the scenario file, in {base})' if resolved != self.path else ''
                raise ValueError(f'no such file: {self.path}{where}')
            object.__setattr__(self, 'path', resolved.resolve())
        return self


class Fact(_Model):
    """A fact about the user, stored in long-term memory before the first turn."""

    text: str = Field(min_length=1, max_length=500)
    source: Literal['user-stated', 'tool', 'inferred'] = 'user-stated'

    @model_validator(mode='before')
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {'text': value} if isinstance(value, str) else value


class OtherUser(_Model):
    """Another user of the same tenant, with data of their own: what the scenario's user must never see."""

    id: str
    facts: list[Fact] = Field(default_factory=list[Fact])
    """Stored in this user's long-term memory."""
    documents: list[Document] = Field(default_factory=list[Document])
    """Ingested into this user's own knowledge base (`tandem ingest --user`), not the tenant's."""

    @field_validator('id')
    @classmethod
    def _user_id(cls, value: str) -> str:
        return validate_id('user', value)


class Setup(_Model):
    """What the scenario starts from."""

    prompt: str | None = None
    """`NAME` or `NAME@VERSION`; else the run's `--prompt`, else the configured prompt."""
    tools: list[str] | None = None
    """Toolsets that are on (`calc`, `clock`, `web`, `knowledge`, `memory`, ...); omitted: the configured ones; `[]`: none."""
    user: str = 'user'
    """The user id the turns run as."""
    documents: list[Document] = Field(default_factory=list[Document])
    facts: list[Fact] = Field(default_factory=list[Fact])
    settings: dict[str, Any] = Field(default_factory=dict[str, Any])
    """Overrides of Tandem's settings for this scenario, e.g. `{retrieval: auto, limits: {requests: 4}}`."""
    other_users: list[OtherUser] = Field(default_factory=list[OtherUser])
    """Other users of the tenant and their data, seeded too; a turn may run as one of them (`as_user`)."""

    @field_validator('user')
    @classmethod
    def _user_id(cls, value: str) -> str:
        return validate_id('user', value)

    @field_validator('tools', mode='before')
    @classmethod
    def _split_tools(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(',') if part.strip()]
        return value


class Scenario(_Model):
    """One scripted, multi-turn task."""

    name: str = Field(min_length=1, max_length=120)
    description: str = ''
    tags: list[Tag] = Field(default_factory=list[str])
    setup: Setup = Field(default_factory=Setup)
    turns: list[Turn] = Field(min_length=1)

    _path: Path | None = PrivateAttr(default=None)
    _source: SourceMap | None = PrivateAttr(default=None)

    @field_validator('name')
    @classmethod
    def _one_line(cls, value: str) -> str:
        if '\n' in value or value != value.strip():
            raise ValueError('a name is one line without surrounding spaces')
        return value

    @field_validator('tags', mode='before')
    @classmethod
    def _tag_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def path(self) -> Path | None:
        """The file the scenario was loaded from, if any."""
        return self._path

    def located(self, path: Path, source: SourceMap) -> Scenario:
        """The scenario, knowing the file (and the line of each value) it was loaded from."""
        self._path = path
        self._source = source
        return self

    def where(self, *loc: str | int) -> str:
        """`path:line` of a part of the scenario, for messages about it; the name when it has no file."""
        if self._path is None or self._source is None:
            return f'scenario {self.name!r}'
        return f'{self._path}:{self._source.line_of(loc)}'

    def problem(self, loc: Loc, message: str) -> Problem:
        """A problem with a part of this scenario, located in its file."""
        path = self._path or Path(f'<{self.name}>')
        mark = self._source.locate(loc)[0] if self._source is not None else None
        return Problem(path, mark.line if mark else 1, mark.column if mark else 1, dotted(loc), message)


# --- loading ---------------------------------------------------------------------------------------


def _annotation_fields(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation such as `Setup`, `list[Turn]` or `Judge | None`."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _annotation_fields(get_args(annotation)[0])
    if origin in (Union, types.UnionType, list, dict):
        for argument in reversed(get_args(annotation)):
            found = _annotation_fields(argument)
            if found is not None:
                return found
        return None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _known_keys(loc: Loc) -> list[str] | None:
    """The field names allowed at `loc` of a scenario (the mapping the last part is a key of)."""
    model: type[BaseModel] | None = Scenario
    for part in loc[:-1]:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _annotation_fields(field.annotation) if field is not None else None
        if model is not None and issubclass(model, ArgMatch):  # below `args` and `fields`: names, anything goes
            return None
    return [field.alias or name for name, field in model.model_fields.items()] if model is not None else None


def _problem(source: SourceMap, error: Any) -> Problem:
    loc = cast(Loc, tuple(error['loc']))
    mark, found, rest = source.locate(loc)
    message = str(error['msg']).removeprefix('Value error, ')
    kind = error['type']
    shown = found
    if kind == 'missing' and rest:
        shown = (*found, *[part for part in rest if isinstance(part, str) and part.isidentifier()][:1])
        message = 'required, but missing'
    elif kind == 'extra_forbidden':
        message = 'unknown key'
        known = _known_keys(found)
        if known and isinstance(found[-1], str):
            close = difflib.get_close_matches(found[-1], known, n=1)
            message += f"; did you mean '{close[0]}'?" if close else f'; known: {", ".join(known)}'
    elif 'input' in error and kind not in ('model_type', 'dict_type', 'list_type'):
        given = error['input']
        if isinstance(given, str | int | float | bool) and kind != 'value_error':
            message += f' (got {given!r})'
    elif kind in ('model_type', 'dict_type'):
        message = 'expected a mapping (key: value lines)'
    elif kind == 'list_type':
        message = 'expected a list (`- item` lines, or [a, b])'
    return Problem(source.path, mark.line, mark.column, dotted(shown), message)


def _settings_problems(data: dict[str, Any], source: SourceMap) -> list[Problem]:
    """Check `setup.settings` against Tandem's settings, key by key, so each problem has its line."""
    setup = data.get('setup')
    overrides = cast(dict[str, Any], setup).get('settings') if isinstance(setup, dict) else None
    if not isinstance(overrides, dict):
        return []
    problems: list[Problem] = []
    fields = Settings.model_fields
    for key, value in cast(dict[str, Any], overrides).items():
        loc: Loc = ('setup', 'settings', key)
        mark = source.locate(loc)[0]
        if key in _FIXED_SETTINGS:
            message = f'cannot be set per scenario: {_FIXED_SETTINGS[key]}'
            problems.append(Problem(source.path, mark.line, mark.column, dotted(loc), message))
            continue
        field = fields.get(key)
        if field is None:
            close = difflib.get_close_matches(key, [name for name in fields if name not in _FIXED_SETTINGS], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ''
            problems.append(Problem(source.path, mark.line, mark.column, dotted(loc), f'unknown setting{hint}'))
            continue
        try:
            TypeAdapter[Any](field.annotation or Any).validate_python(value)
        except ValidationError as error:
            for item in error.errors():
                problems.append(_problem(source, {**item, 'loc': (*loc, *item['loc'])}))
    return problems


def load_scenario(path: Path) -> Scenario:
    """Load and validate one scenario file.

    Raises:
        ScenarioFileError: The file is not valid; every problem names its line.
    """
    try:
        data, source = load_yaml(path)
    except YamlFileError as error:
        raise ScenarioFileError(error.problems) from None
    except FileNotFoundError:
        raise ScenarioFileError([Problem(path, 1, 1, '', 'no such file')]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioFileError([Problem(path, 1, 1, '', f'cannot read: {error}')]) from None
    if not isinstance(data, dict):
        raise ScenarioFileError([Problem(path, 1, 1, '', 'a scenario file is a mapping with name, setup and turns')])
    mapping = cast(dict[str, Any], data)
    problems = _settings_problems(mapping, source)
    scenario: Scenario | None = None
    try:
        scenario = Scenario.model_validate(mapping, context={'base_dir': path.parent})
    except ValidationError as error:
        problems += [_problem(source, item) for item in error.errors()]
    if problems or scenario is None:
        problems.sort(key=lambda problem: (problem.line, problem.column))
        raise ScenarioFileError(problems)
    return scenario.located(path, source)


def discover_files(paths: Iterable[Path]) -> list[Path]:
    """Scenario files in `paths`: files as given, directories searched recursively, in a stable order.

    Raises:
        ScenarioFileError: A path does not exist, or a directory holds no scenario file.
    """
    found: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob('*') if p.suffix in SUFFIXES and p.is_file())
            if not files:
                problems.append(Problem(path, 1, 1, '', 'no scenario files (*.yaml, *.yml) in this directory'))
            found += files
        elif path.is_file():
            found.append(path)
        else:
            problems.append(Problem(path, 1, 1, '', 'no such file or directory'))
    if problems:
        raise ScenarioFileError(problems)
    return list(dict.fromkeys(found))


def load_scenarios(paths: Iterable[Path]) -> list[Scenario]:
    """Load every scenario under `paths`, checking them all before reporting.

    Raises:
        ScenarioFileError: Any file is invalid, or two scenarios share a name; lists every problem.
    """
    scenarios: list[Scenario] = []
    problems: list[Problem] = []
    for path in discover_files(paths):
        try:
            scenarios.append(load_scenario(path))
        except ScenarioFileError as error:
            problems += error.problems
    first: dict[str, Scenario] = {}
    for scenario in scenarios:
        if scenario.name in first:
            problems.append(
                scenario.problem(('name',), f'another scenario has this name: {first[scenario.name].where("name")}')
            )
        first.setdefault(scenario.name, scenario)
    if problems:
        raise ScenarioFileError(problems)
    return scenarios


def select_scenarios(scenarios: Sequence[Scenario], keywords: Sequence[str]) -> list[Scenario]:
    """The scenarios `-k` selects: those with any of `keywords` as a tag, or in their name; all when none."""
    if not keywords:
        return list(scenarios)
    wanted = [keyword.lower() for keyword in keywords]
    return [
        scenario
        for scenario in scenarios
        if any(word in {tag.lower() for tag in scenario.tags} or word in scenario.name.lower() for word in wanted)
    ]

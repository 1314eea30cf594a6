"""The registry of backbones: `[backbones.NAME]` tables written back into the user's TOML config.

`tandem backbones add` and a succeeded `tandem tune status` both register a backbone here. The file
is the one Tandem reads (`agent.core.config.config_file_path`), or, when there is none, `$TANDEM_CONFIG`
or `~/.config/tandem/config.toml`, created on first use.

The edit is textual, so comments, ordering and formatting of everything else survive: a new table is
appended, an existing one (with `replace=True`) is swapped in place. Before anything is written, the
new text is parsed and compared with the old: it must differ in `backbones.NAME` and nowhere else,
otherwise nothing is written and the error says what to add by hand. The write itself is atomic (a
temporary file renamed over the old one, through symlinks to the real file), so a crash leaves the
old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import tomllib
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from tandem.agent.core.config import BackboneConfig, config_file_path
from tandem.agent.core.errors import ConfigError
from tandem.agent.core.files import write_atomically

__all__ = [
    'BACKBONE_NAME_PATTERN',
    'Registration',
    'backbone_table',
    'config_target',
    'local_backbone_config',
    'register_backbone',
    'validate_backbone_name',
]

BACKBONE_NAME_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9._@-]{0,63}')
"""Backbone names: what `--backbone NAME` and `/backbone NAME` accept without quoting."""

_BARE_KEY = re.compile(r'[A-Za-z0-9_-]+')
_ANY_HEADER = re.compile(r'^[ \t]*\[')


@dataclass(frozen=True)
class Registration:
    """What `register_backbone` did."""

    name: str
    path: Path
    """The config file written (or that already held the same table)."""
    action: str
    """`added`, `replaced` or `unchanged`."""
    created_file: bool = False


def validate_backbone_name(name: str) -> str:
    """Check a backbone name and return it.

    Raises:
        ConfigError: It isn't 1-64 letters, digits, `.`, `_`, `@` or `-`, starting with a letter or digit.
    """
    if BACKBONE_NAME_PATTERN.fullmatch(name) is None:
        raise ConfigError(
            f'invalid backbone name {name!r}: use 1-64 letters, digits, ".", "_", "@" or "-", starting with a letter or digit.'
        )
    return name


def config_target() -> Path:
    """The file a registration is written to: the config in force, else `$TANDEM_CONFIG`, else the user config."""
    explicit = os.environ.get('TANDEM_CONFIG')
    if explicit:
        return Path(explicit).expanduser()
    found = config_file_path()
    if found is not None:
        return found
    base = os.environ.get('XDG_CONFIG_HOME')
    return (Path(base) if base else Path.home() / '.config') / 'tandem' / 'config.toml'


_MODEL_PREFIXES = ('openai:', 'openai-chat:', 'openai-responses:', 'llama-cpp:')


def local_backbone_config(
    model: str,
    *,
    base_url: str | None = None,
    fine_tuned_from: str | None = None,
    api_key_env: str | None = None,
) -> BackboneConfig:
    """The config `tandem backbones add` writes: a served model or adapter, or a model string.

    With `base_url`, `model` is the name the server serves (a vLLM LoRA adapter's `--lora-modules`
    name, an Ollama model such as `qwen2.5:3b`), spoken to as `openai-chat:`. Without it, `model` must
    be a model string (`llama-cpp:PATH?lora=ADAPTER`, `openai:ft:...`). `fine_tuned_from` marks the
    backbone `kind = "fine-tuned"` with that `base_model`.

    Raises:
        ConfigError: `model` is neither, or `base_url` is not an http(s) URL.
    """
    model = model.strip()
    if base_url is not None:
        if not re.match(r'https?://[^/\s]+', base_url):
            raise ConfigError(f'--base-url {base_url!r}: give an http(s) URL such as http://127.0.0.1:8000/v1.')
        spec = model if model.startswith(('openai-chat:', 'openai:', 'openai-responses:')) else f'openai-chat:{model}'
    elif model.startswith(_MODEL_PREFIXES):
        spec = model
    else:
        raise ConfigError(
            f'--model {model!r} needs --base-url (the OpenAI-compatible server that serves it), '
            'or a model string such as llama-cpp:PATH.gguf or openai:ft:...'
        )
    if not spec.partition(':')[2]:
        raise ConfigError(f'--model {model!r} names no model.')
    return BackboneConfig(
        model=spec,
        base_url=base_url.rstrip('/') if base_url else None,
        api_key_env=api_key_env,
        kind='fine-tuned' if fine_tuned_from else 'base',
        base_model=fine_tuned_from,
    )


def backbone_table(name: str, config: BackboneConfig) -> str:
    """The `[backbones.NAME]` table for `config`, with only the fields that differ from the defaults."""
    data = _config_data(config)
    lines = [f'[backbones.{_key(name)}]']
    lines += [f'{_key(key)} = {_value(value)}' for key, value in data.items()]
    return '\n'.join(lines) + '\n'


def register_backbone(
    name: str,
    config: BackboneConfig,
    *,
    path: Path | None = None,
    replace: bool = False,
    comment: str | None = None,
) -> Registration:
    """Write `[backbones.NAME]` into the TOML config, keeping everything else in the file as it was.

    Args:
        name: The backbone's name.
        config: What to write; fields left at their defaults are omitted.
        path: The file; `config_target()` when omitted. Created (with its folder) if missing.
        replace: Overwrite a backbone of that name that differs; otherwise that is an error.
        comment: A line written above a newly added table, e.g. where it came from.

    Raises:
        ConfigError: The name is invalid, the file is not valid TOML, a different backbone of that
            name exists and `replace` is false, or the file defines `backbones` in a form this
            function does not edit safely (then nothing is written).
    """
    validate_backbone_name(name)
    target = (path or config_target()).expanduser()
    real = target.resolve() if target.is_symlink() else target
    table = backbone_table(name, config)
    wanted = cast(dict[str, Any], tomllib.loads(table)['backbones'])[name]
    real.parent.mkdir(parents=True, exist_ok=True)
    with _locked(real):
        created = not real.exists()
        old_text = '' if created else real.read_text(encoding='utf-8')
        try:
            old = tomllib.loads(old_text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f'{target} is not valid TOML ({error}): fix it, then register again.') from error
        existing = _backbones(old).get(name)
        if existing == wanted:
            return Registration(name, target, 'unchanged')
        if existing is not None and not replace:
            raise ConfigError(
                f'{target} already has a different backbone {name!r}: pick another name, or replace it (--replace).'
            )
        new_text = _replaced(old_text, name, table) if existing is not None else _appended(old_text, table, comment)
        _check(old, new_text, name, wanted, target)
        write_atomically(real, new_text)
    return Registration(name, target, 'replaced' if existing is not None else 'added', created_file=created)


def _config_data(config: BackboneConfig) -> dict[str, Any]:
    data = config.model_dump(mode='json', exclude_defaults=True)
    data['model'] = config.model
    ordered = {'model': data.pop('model')}
    ordered.update({key: value for key, value in data.items() if value is not None})
    return ordered


def _backbones(document: Mapping[str, Any]) -> dict[str, Any]:
    section = document.get('backbones')
    return cast(dict[str, Any], section) if isinstance(section, dict) else {}


def _appended(old_text: str, table: str, comment: str | None) -> str:
    text = old_text
    if text and not text.endswith('\n'):
        text += '\n'
    if text.strip():
        text += '\n'
    note = comment or f'added by tandem on {datetime.now(UTC):%Y-%m-%d}'
    return text + f'# {note}\n' + table


def _replaced(old_text: str, name: str, table: str) -> str:
    """`old_text` with the `[backbones.NAME]` block (and its sub-tables) swapped for `table`."""
    lines = old_text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if _header_path(line) == ['backbones', name]), None)
    if start is None:
        return old_text  # defined inline or with dotted keys: `_check` refuses the unchanged text
    end = start + 1
    while end < len(lines):
        path = _header_path(lines[end]) if _ANY_HEADER.match(lines[end]) else None
        if path is not None and path[:2] != ['backbones', name]:
            break
        end += 1
    # Blank lines and comments just above the next header belong to it, not to this table.
    while end - 1 > start and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith('#')):
        end -= 1
    return ''.join(lines[:start]) + table + ''.join(lines[end:])


def _header_path(line: str) -> list[str] | None:
    """The dotted key of a `[table]` or `[[array]]` header line, or `None` for any other line."""
    if not _ANY_HEADER.match(line):
        return None
    try:
        document: Any = tomllib.loads(line.strip() + '\n')
    except tomllib.TOMLDecodeError:
        return None  # e.g. a line of a multi-line array that starts with `[`
    path: list[str] = []
    while isinstance(document, dict | list) and document:
        if isinstance(document, list):
            document = cast(list[Any], document)[-1]
            continue
        key, document = next(iter(cast(dict[str, Any], document).items()))
        path.append(key)
    return path


def _check(old: dict[str, Any], new_text: str, name: str, wanted: Any, target: Path) -> None:
    expected = copy.deepcopy(old)
    section = expected.setdefault('backbones', {})
    if isinstance(section, dict):
        cast(dict[str, Any], section)[name] = wanted
    try:
        ok = tomllib.loads(new_text) == expected
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:
        raise ConfigError(
            f'{target} defines `backbones` in a form Tandem does not edit (an inline table or dotted keys): '
            f'add [backbones.{_key(name)}] by hand; nothing was written.'
        )


@contextlib.contextmanager
def _locked(path: Path) -> Generator[None]:
    """Serialise registrations of concurrent `tandem` processes on a hidden lock file beside `path`."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; the atomic rename still keeps the file whole
        yield
        return
    lock_path = path.parent / f'.{path.name}.lock'
    with open(lock_path, 'a+b') as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    escapes = {'"': '\\"', '\\': '\\\\', '\b': '\\b', '\t': '\\t', '\n': '\\n', '\f': '\\f', '\r': '\\r'}
    out: list[str] = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f'\\u{ord(char):04X}')
        else:
            out.append(char)
    return '"' + ''.join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return 'nan'
        if math.isinf(value):
            return 'inf' if value > 0 else '-inf'
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return '[' + ', '.join(_value(item) for item in cast(list[Any], value)) + ']'
    if isinstance(value, dict):
        items = cast(dict[str, Any], value)
        inner = ', '.join(f'{_key(str(key))} = {_value(item)}' for key, item in items.items() if item is not None)
        return '{ ' + inner + ' }' if inner else '{}'
    raise ConfigError(f'cannot write {type(value).__name__} value {value!r} to TOML')

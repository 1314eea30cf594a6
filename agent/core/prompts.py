"""Prompt templates: files with YAML front matter, rendered by Jinja2 with `StrictUndefined`.

A template lives at `<dir>/<name>/<version>.md.j2`. User prompts (`TANDEM_PROMPTS_DIR`) take
precedence over the bundled ones, which ship inside the wheel.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import yaml

from tandem.agent.core.errors import PromptError

_FRONT_MATTER = re.compile(r'\A---\s*\n(?P<meta>.*?)\n---\s*\n(?P<body>.*)\Z', re.DOTALL)
_SUFFIX = '.md.j2'


def bundled_prompts_dir() -> Path:
    """The prompts shipped with Tandem: `tandem/prompts` in the wheel, `prompts/` in a source checkout.

    Both sit beside this package's folder (`package-dir` in pyproject.toml maps one layout onto the other).
    """
    return Path(__file__).resolve().parents[2] / 'prompts'


def _version_key(version: str) -> tuple[int | str, ...]:
    return tuple(int(part) if part.isdigit() else part for part in version.split('.'))


@dataclass(frozen=True)
class PromptTemplate:
    """One version of one prompt."""

    name: str
    version: str
    description: str
    source: str
    path: Path

    @classmethod
    def literal(cls, text: str) -> PromptTemplate:
        """A prompt that is `text` as written, template syntax and all: `--system TEXT` for one run."""
        return cls(
            name='system',
            version='given',
            description='a system prompt given for one run',
            source='{% raw %}'
            + text.replace('{% endraw %}', '{% endraw %}{{ "{% endraw %}" }}{% raw %}')
            + '{% endraw %}',
            path=Path('--system'),
        )

    @property
    def ref(self) -> str:
        """`name@version`, as logged and shown in the status line."""
        return f'{self.name}@{self.version}'

    @cached_property
    def _template(self) -> jinja2.Template:
        environment = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=False, trim_blocks=True, autoescape=False
        )
        try:
            return environment.from_string(self.source)
        except jinja2.TemplateSyntaxError as error:
            raise PromptError(f'prompt {self.ref} ({self.path}) line {error.lineno}: {error.message}') from error

    def render(self, variables: Mapping[str, Any]) -> str:
        """Render with `variables`; a variable the template needs but was not given fails loudly.

        Raises:
            PromptError: The template is malformed or uses an undefined variable.
        """
        try:
            return self._template.render(**variables).strip() + '\n'
        except jinja2.UndefinedError as error:
            raise PromptError(
                f'prompt {self.ref} ({self.path}) uses an undefined variable: {error.message}. '
                f'Available: {", ".join(sorted(variables))}.'
            ) from error


def _parse(path: Path) -> PromptTemplate:
    text = path.read_text(encoding='utf-8')
    match = _FRONT_MATTER.match(text)
    if match is None:
        raise PromptError(
            f'prompt file {path} has no front matter: start it with a --- block holding name and version.'
        )
    try:
        meta: Any = yaml.safe_load(match['meta']) or {}
    except yaml.YAMLError as error:
        raise PromptError(f'prompt file {path} has invalid front matter: {error}') from error
    if not isinstance(meta, dict):
        raise PromptError(f'prompt file {path}: front matter must be a mapping with name and version.')
    fields: dict[str, Any] = dict(meta)  # pyright: ignore[reportUnknownArgumentType]
    name = str(fields.get('name') or path.parent.name)
    version = str(fields.get('version') or path.name.removesuffix(_SUFFIX))
    return PromptTemplate(
        name=name,
        version=version,
        description=str(fields.get('description', '')),
        source=match['body'],
        path=path,
    )


class PromptLibrary:
    """Every prompt template Tandem can see, by name and version."""

    def __init__(self, dirs: Sequence[Path]):
        """Index the templates in `dirs`; earlier directories win over later ones."""
        self._templates: dict[str, dict[str, PromptTemplate]] = {}
        for directory in reversed(dirs):
            if not directory.is_dir():
                continue
            for path in sorted(directory.glob(f'*/*{_SUFFIX}')):
                template = _parse(path)
                self._templates.setdefault(template.name, {})[template.version] = template

    @classmethod
    def default(cls, user_dir: Path | None = None) -> PromptLibrary:
        """The bundled prompts, overlaid by `user_dir` when given."""
        if user_dir is not None and not user_dir.is_dir():
            raise PromptError(f'prompts directory {user_dir} does not exist: create it or unset TANDEM_PROMPTS_DIR.')
        return cls([d for d in (user_dir, bundled_prompts_dir()) if d is not None])

    def names(self) -> list[str]:
        """Every prompt name, sorted."""
        return sorted(self._templates)

    def versions(self, name: str) -> list[str]:
        """The versions of `name`, oldest first."""
        return sorted(self._templates.get(name, {}), key=_version_key)

    def get(self, ref: str) -> PromptTemplate:
        """The template for `NAME` (latest version) or `NAME@VERSION`.

        Raises:
            PromptError: No such prompt or version; the message lists what exists.
        """
        name, _, version = ref.partition('@')
        versions = self._templates.get(name)
        if not versions:
            known = ', '.join(self.names()) or 'none'
            raise PromptError(f'unknown prompt {name!r}: choose one of {known} (or add it to TANDEM_PROMPTS_DIR).')
        if not version:
            version = self.versions(name)[-1]
        if version not in versions:
            raise PromptError(
                f'prompt {name!r} has no version {version!r}: choose one of {", ".join(self.versions(name))}.'
            )
        return versions[version]

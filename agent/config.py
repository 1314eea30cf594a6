"""Tandem's configuration: CLI flags, then `TANDEM_*` environment, then a TOML file, then defaults.

The TOML file is `$TANDEM_CONFIG`, else `./tandem.toml`, else `~/.config/tandem/config.toml`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agent.errors import ConfigError

_toml_file: ContextVar[Path | None] = ContextVar('_toml_file', default=None)


def _xdg_dir(env: str, fallback: str) -> Path:
    base = os.environ.get(env)
    return Path(base) if base else Path.home() / fallback


def default_home() -> Path:
    """The data directory when `TANDEM_HOME` is unset: `$XDG_DATA_HOME/tandem`."""
    return _xdg_dir('XDG_DATA_HOME', '.local/share') / 'tandem'


def config_file_path() -> Path | None:
    """The TOML file in force: `$TANDEM_CONFIG`, else `./tandem.toml`, else the user config, else none."""
    explicit = os.environ.get('TANDEM_CONFIG')
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(
                f'TANDEM_CONFIG points at {path}, which does not exist: create it or unset TANDEM_CONFIG.'
            )
        return path
    for candidate in (Path.cwd() / 'tandem.toml', _xdg_dir('XDG_CONFIG_HOME', '.config') / 'tandem' / 'config.toml'):
        if candidate.is_file():
            return candidate
    return None


class BackboneConfig(BaseModel):
    """One named backbone: a model, where it is served, and what it is."""

    model: str
    """A pydantic-ai model string, e.g. `openai:gpt-4.1-mini` or `openai-chat:qwen2.5` (with `base_url`)."""
    base_url: str | None = None
    """An OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio), e.g. `http://127.0.0.1:8000/v1`."""
    api_key_env: str | None = None
    """The environment variable holding the API key; `OPENAI_API_KEY` is used when unset."""
    kind: Literal['base', 'fine-tuned'] = 'base'
    base_model: str | None = None
    """What a fine-tune was trained from."""
    settings: dict[str, Any] = Field(default_factory=dict[str, Any])
    """Model settings such as `temperature` or `max_tokens`."""
    input_price_per_mtok: float | None = None
    """USD per million input tokens, for cost reports when pydantic-ai's price table lacks the model."""
    output_price_per_mtok: float | None = None


class LimitsConfig(BaseModel):
    """Per-turn usage limits, so a looping model cannot run up an unbounded bill."""

    requests: int = 16
    tool_calls: int = 24
    total_tokens: int = 200_000
    tool_timeout_seconds: float = 30.0
    tool_retries: int = 3
    """How often the model may retry a tool call that failed validation or asked for a retry."""
    tool_argument_bytes: int = 65_536
    """Larger tool arguments are refused before validation, and the model is asked to send less."""


class ApprovalsConfig(BaseModel):
    """What happens to side-effect tool calls in a turn that untrusted content entered."""

    unattended: Literal['deny', 'allow'] = 'deny'
    """With nobody to ask (ask, HTTP, scenarios): deny such calls (the default), or let them run."""


class WebConfig(BaseModel):
    """The web tools."""

    allowed_hosts: list[str] = Field(default_factory=list[str])
    """Hosts `web_fetch` may reach although they are private (an intranet, say): `host` or `host:port`."""


class KnowledgeConfig(BaseModel):
    """The knowledge base: ingestion and search."""

    default_kb: str = 'default'
    top_k: int = 5


class MemoryConfig(BaseModel):
    """Long-term memory: facts about the user, recalled every turn, and history compaction."""

    enabled: bool = True
    extract: bool = False
    """After each turn, ask the backbone for durable facts about the user (off the latency path)."""


class Settings(BaseSettings):
    """Every knob Tandem has. See the README's configuration reference."""

    model_config = SettingsConfigDict(
        env_prefix='TANDEM_',
        env_nested_delimiter='__',
        extra='forbid',
        validate_default=True,
    )

    home: Path = Field(default_factory=default_home)
    redis_url: SecretStr | None = None
    """`redis://`, `rediss://`, `unix://` or `redis+cluster://`; unset starts the embedded server in `home`."""
    backbone: str | None = None
    """The backbone name (or a model string) used when a command names none."""
    log_level: Literal['DEBUG', 'INFO', 'WARNING', 'ERROR'] = 'INFO'
    prompts_dir: Path | None = None
    """Extra prompt templates; they take precedence over the bundled ones with the same name."""
    prompt: str = 'assistant'
    """`NAME` or `NAME@VERSION`; the latest version when no version is given."""
    tenant: str = 'default'
    user: str = 'local'
    tools: list[str] | None = None
    """Toolsets to enable by name; unset enables every installed toolset."""
    session_ttl_seconds: int | None = None
    openai_model: str = 'gpt-4.1-mini'
    """The model used when only `OPENAI_API_KEY` is set."""
    backbones: dict[str, BackboneConfig] = Field(default_factory=dict[str, BackboneConfig])
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    retrieval: Literal['tool', 'auto', 'off'] = 'tool'
    """`tool`: the model calls `search_knowledge`; `auto`: top passages go into the prompt; `off`."""
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)

    @field_validator('home', 'prompts_dir', mode='after')
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator('tools', mode='before')
    @classmethod
    def _split_tools(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(',') if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _toml_file.get()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, with secrets masked."""
        data = self.model_dump(mode='json')
        if self.redis_url is not None:
            data['redis_url'] = _mask_url(self.redis_url.get_secret_value())
        return data


def _mask_url(url: str) -> str:
    """Hide a password in a URL such as `redis://:secret@host`."""
    scheme, sep, rest = url.partition('://')
    if not sep or '@' not in rest:
        return url
    credentials, _, host = rest.rpartition('@')
    user = credentials.split(':', 1)[0]
    return f'{scheme}://{user}:***@{host}'


def load_settings(**overrides: Any) -> Settings:
    """Load settings with `overrides` (CLI flags; `None` values are ignored) taking precedence.

    Raises:
        ConfigError: The file or environment holds an invalid value; the message names it.
    """
    path = config_file_path()
    token = _toml_file.set(path)
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        first = error.errors()[0]
        where = '.'.join(str(part) for part in first['loc'])
        origin = f' (from {path})' if path else ''
        raise ConfigError(f'invalid configuration{origin}: {where}: {first["msg"]}') from error
    except (OSError, ValueError) as error:
        raise ConfigError(f'cannot read configuration file {path}: {error}') from error
    finally:
        _toml_file.reset(token)

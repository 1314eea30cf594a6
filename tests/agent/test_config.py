"""Configuration precedence: CLI flags, then environment, then the TOML file, then defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.agent.core.config import load_settings
from tandem.agent.core.errors import ConfigError


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ('TANDEM_CONFIG', 'TANDEM_HOME', 'TANDEM_BACKBONE', 'TANDEM_REDIS_URL', 'TANDEM_LOG_LEVEL'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('XDG_CONFIG_HOME', str(tmp_path / 'xdg-config'))
    monkeypatch.setenv('XDG_DATA_HOME', str(tmp_path / 'xdg-data'))
    monkeypatch.chdir(tmp_path)


def test_defaults_put_data_in_the_xdg_data_dir(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.home == tmp_path / 'xdg-data' / 'tandem'
    assert settings.backbone is None
    assert settings.redis_url is None


def test_flags_beat_environment_beat_file_beat_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / 'tandem.toml').write_text('backbone = "from-file"\nlog_level = "DEBUG"\nprompt = "short"\n')
    monkeypatch.setenv('TANDEM_BACKBONE', 'from-env')
    monkeypatch.setenv('TANDEM_LOG_LEVEL', 'ERROR')

    settings = load_settings(backbone='from-flag')

    assert settings.backbone == 'from-flag'  # flag over env
    assert settings.log_level == 'ERROR'  # env over file
    assert settings.prompt == 'short'  # file over default
    assert settings.tenant == 'default'  # default


def test_the_file_is_found_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    user_file = tmp_path / 'xdg-config' / 'tandem' / 'config.toml'
    user_file.parent.mkdir(parents=True)
    user_file.write_text('prompt = "from-user-config"\n')
    assert load_settings().prompt == 'from-user-config'

    (tmp_path / 'tandem.toml').write_text('prompt = "from-cwd"\n')
    assert load_settings().prompt == 'from-cwd'

    explicit = tmp_path / 'elsewhere.toml'
    explicit.write_text('prompt = "from-TANDEM_CONFIG"\n')
    monkeypatch.setenv('TANDEM_CONFIG', str(explicit))
    assert load_settings().prompt == 'from-TANDEM_CONFIG'


def test_backbones_are_read_from_the_file(tmp_path: Path) -> None:
    (tmp_path / 'tandem.toml').write_text(
        """
[backbones.local]
model = "openai-chat:qwen2.5"
base_url = "http://127.0.0.1:8000/v1"

[backbones.tuned]
model = "openai:ft:gpt-4.1-mini-2025-04-14:acme::abc123"
kind = "fine-tuned"
base_model = "gpt-4.1-mini"
settings = { temperature = 0.2 }
"""
    )
    settings = load_settings()
    assert settings.backbones['local'].base_url == 'http://127.0.0.1:8000/v1'
    assert settings.backbones['tuned'].kind == 'fine-tuned'
    assert settings.backbones['tuned'].settings == {'temperature': 0.2}


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('TANDEM_REDIS_URL', 'redis://:hunter2@db.internal:6379/0')
    masked = load_settings().masked()
    assert masked['redis_url'] == 'redis://:***@db.internal:6379/0'
    assert 'hunter2' not in str(masked)


def test_invalid_values_name_the_field_and_the_file(tmp_path: Path) -> None:
    (tmp_path / 'tandem.toml').write_text('log_level = "LOUD"\n')
    with pytest.raises(ConfigError, match=r'tandem.toml.*log_level'):
        load_settings()


def test_a_missing_TANDEM_CONFIG_file_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv('TANDEM_CONFIG', str(tmp_path / 'nope.toml'))
    with pytest.raises(ConfigError, match='does not exist'):
        load_settings()


def test_the_url_allowlist_takes_hosts_and_refuses_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv('TANDEM_SECURITY__URL_ALLOWLIST', 'Docs.Example.com, *.cdn.example, intranet:8443')
    assert load_settings().security.url_allowlist == ['docs.example.com', '*.cdn.example', 'intranet:8443']

    (tmp_path / 'tandem.toml').write_text('[security]\nurl_allowlist = ["https://example.com/x"]\n')
    monkeypatch.delenv('TANDEM_SECURITY__URL_ALLOWLIST')
    with pytest.raises(ConfigError, match=r"security.url_allowlist.*'https://example.com/x' is not a host"):
        load_settings()


def test_list_settings_read_comma_separated_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('TANDEM_WEB__ALLOWED_HOSTS', 'intranet:8080, wiki.corp')
    assert load_settings().web.allowed_hosts == ['intranet:8080', 'wiki.corp']
    monkeypatch.setenv('TANDEM_WEB__ALLOWED_HOSTS', '["a.corp"]')
    assert load_settings().web.allowed_hosts == ['a.corp']


def test_a_bad_environment_value_names_the_variable_not_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('TANDEM_LIMITS', '{not json')
    with pytest.raises(
        ConfigError, match=r'^invalid value in the environment, in TANDEM_LIMITS or a TANDEM_LIMITS__\*'
    ):
        load_settings()

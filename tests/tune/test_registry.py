"""Registering backbones in the TOML config: comments and everything else survive, conflicts are refused."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandem.agent.cli.main import app
from tandem.agent.core.config import BackboneConfig, load_settings
from tandem.agent.core.errors import ConfigError
from tandem.agent.tune.registry import backbone_table, config_target, local_backbone_config, register_backbone
from tests.support.fake_openai import FakeOpenAI, ToolCall

runner = CliRunner()
LORA = BackboneConfig(
    model='openai-chat:support-lora',
    base_url='http://127.0.0.1:8000/v1',
    kind='fine-tuned',
    base_model='Qwen/Qwen2.5-3B-Instruct',
)


def test_a_new_table_is_appended_and_nothing_else_changes(config_file: Path) -> None:
    before = config_file.read_text()
    done = register_backbone('support-lora', LORA, comment='from the test')
    assert (done.action, done.path, done.created_file) == ('added', config_file, False)
    text = config_file.read_text()
    assert text.startswith(before)
    assert text[len(before) :] == (
        '\n# from the test\n'
        '[backbones.support-lora]\n'
        'model = "openai-chat:support-lora"\n'
        'base_url = "http://127.0.0.1:8000/v1"\n'
        'kind = "fine-tuned"\n'
        'base_model = "Qwen/Qwen2.5-3B-Instruct"\n'
    )
    settings = load_settings()
    assert settings.backbones['support-lora'] == LORA
    assert settings.limits.requests == 8 and settings.tenant == 'acme'


def test_registering_the_same_backbone_again_changes_nothing(config_file: Path) -> None:
    register_backbone('support-lora', LORA)
    text = config_file.read_text()
    assert register_backbone('support-lora', LORA).action == 'unchanged'
    assert config_file.read_text() == text


def test_a_different_backbone_of_that_name_is_refused_unless_replaced(config_file: Path) -> None:
    other = BackboneConfig(model='openai-chat:other', base_url='http://127.0.0.1:9000/v1')
    with pytest.raises(ConfigError, match="already has a different backbone 'local': pick another name, or replace it"):
        register_backbone('local', other)
    done = register_backbone('local', other, replace=True)
    assert done.action == 'replaced'
    text = config_file.read_text()
    assert '# my settings: keep this comment' in text and '# limits come last' in text
    assert (
        '[backbones.local]\nmodel = "openai-chat:other"\nbase_url = "http://127.0.0.1:9000/v1"\n\n# limits come last\n[limits]'
        in text
    )
    assert load_settings().backbones['local'] == other and load_settings().limits.requests == 8


def test_sub_tables_of_a_replaced_backbone_go_with_it(tmp_path: Path) -> None:
    path = tmp_path / 'c.toml'
    path.write_text(
        '[backbones.x]\nmodel = "openai:a"\n\n[backbones.x.settings]\ntemperature = 0.5\n\n[backbones.y]\nmodel = "openai:b"\n'
    )
    register_backbone('x', BackboneConfig(model='openai:c', settings={'max_tokens': 5}), path=path, replace=True)
    data = tomllib.loads(path.read_text())
    assert data['backbones'] == {'x': {'model': 'openai:c', 'settings': {'max_tokens': 5}}, 'y': {'model': 'openai:b'}}


def test_backbones_written_inline_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / 'c.toml'
    path.write_text('backbones = { x = { model = "openai:a" } }\n')
    with pytest.raises(ConfigError, match=r'defines `backbones` in a form Tandem does not edit .* nothing was written'):
        register_backbone('y', BackboneConfig(model='openai:b'), path=path)
    assert path.read_text() == 'backbones = { x = { model = "openai:a" } }\n'


def test_invalid_toml_is_reported_and_kept(tmp_path: Path) -> None:
    path = tmp_path / 'c.toml'
    path.write_text('this is = = not toml\n')
    with pytest.raises(ConfigError, match='is not valid TOML'):
        register_backbone('y', BackboneConfig(model='openai:b'), path=path)
    assert path.read_text() == 'this is = = not toml\n'


def test_names_and_values_are_quoted_when_they_must_be() -> None:
    config = BackboneConfig(model='openai-chat:we"ird\\name\n', settings={'stop key': ['a', 'b'], 'temperature': 0.2})
    table = backbone_table('v1.5', config)
    assert table.splitlines()[0] == '[backbones."v1.5"]'
    assert tomllib.loads(table)['backbones']['v1.5'] == config.model_dump(mode='json', exclude_defaults=True)


def test_the_user_config_is_created_when_there_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv('TANDEM_CONFIG', raising=False)
    monkeypatch.setenv('XDG_CONFIG_HOME', str(tmp_path / 'xdg'))
    monkeypatch.chdir(tmp_path)
    assert config_target() == tmp_path / 'xdg' / 'tandem' / 'config.toml'
    done = register_backbone('a', BackboneConfig(model='openai:gpt-4.1-mini'))
    assert done.created_file and done.path == tmp_path / 'xdg' / 'tandem' / 'config.toml'
    assert os.stat(done.path).st_mode & 0o777 == 0o600
    assert load_settings().backbones['a'].model == 'openai:gpt-4.1-mini'


def test_tandem_config_is_created_when_it_names_a_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('TANDEM_CONFIG', str(tmp_path / 'new' / 'tandem.toml'))
    register_backbone('a', BackboneConfig(model='openai:gpt-4.1-mini'))
    assert load_settings().backbones['a'].model == 'openai:gpt-4.1-mini'


def test_a_symlinked_config_stays_a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / 'dotfiles' / 'tandem.toml'
    real.parent.mkdir()
    real.write_text('tenant = "acme"\n')
    link = tmp_path / 'tandem.toml'
    link.symlink_to(real)
    monkeypatch.setenv('TANDEM_CONFIG', str(link))
    register_backbone('a', BackboneConfig(model='openai:gpt-4.1-mini'))
    assert link.is_symlink() and 'backbones.a' in real.read_text()


@pytest.mark.parametrize(
    ('model', 'base_url', 'expected'),
    [
        ('support-lora', 'http://127.0.0.1:8000/v1/', 'openai-chat:support-lora'),
        ('qwen2.5:3b-support', 'http://127.0.0.1:11434/v1', 'openai-chat:qwen2.5:3b-support'),
        ('openai-chat:x', 'http://h/v1', 'openai-chat:x'),
        ('llama-cpp:/m/base.gguf?lora=/m/a.gguf', None, 'llama-cpp:/m/base.gguf?lora=/m/a.gguf'),
    ],
)
def test_local_backbone_configs(model: str, base_url: str | None, expected: str) -> None:
    config = local_backbone_config(model, base_url=base_url, fine_tuned_from='Qwen/Qwen2.5-3B-Instruct')
    assert config.model == expected and config.kind == 'fine-tuned' and config.base_model == 'Qwen/Qwen2.5-3B-Instruct'
    assert config.base_url == (base_url.rstrip('/') if base_url else None)


def test_local_backbone_config_errors_are_actionable() -> None:
    with pytest.raises(ConfigError, match='needs --base-url'):
        local_backbone_config('support-lora')
    with pytest.raises(ConfigError, match='give an http'):
        local_backbone_config('x', base_url='127.0.0.1:8000')


def test_cli_backbones_add_registers_a_lora_adapter_and_probes_it(config_file: Path, tmp_path: Path) -> None:
    with FakeOpenAI(models=['support-lora'], script=[ToolCall.one('add', a=2, b=3)]) as server:
        url = server.url
        result = runner.invoke(
            app,
            [
                'backbones',
                'add',
                'support',
                '--base-url',
                server.url,
                '--model',
                'support-lora',
                '--fine-tuned-from',
                'Qwen/Qwen2.5-3B-Instruct',
                '--training-examples',
                '800',
            ],
            env={'TANDEM_HOME': str(tmp_path / 'home')},
        )
    assert result.exit_code == 0, result.stderr
    assert f'added backbone support (openai-chat:support-lora) in {config_file}' in ' '.join(result.stderr.split())
    assert 'warning' not in result.stderr
    added = load_settings().backbones['support']
    assert (added.kind, added.base_model, added.base_url) == ('fine-tuned', 'Qwen/Qwen2.5-3B-Instruct', url)
    assert added.training_examples == 800
    untuned = runner.invoke(
        app, ['backbones', 'add', 'b', '--model', 'm', '--base-url', url, '--training-examples', '9']
    )
    assert untuned.exit_code == 1
    assert untuned.stderr.strip().endswith(
        '--training-examples describes a fine-tune: give --fine-tuned-from BASE too.'
    )

    again = runner.invoke(app, ['backbones', 'add', 'support', '--model', 'other', '--base-url', url, '--no-probe'])
    assert again.exit_code == 1 and 'already has a different backbone' in again.stderr


def test_cli_backbones_add_warns_when_the_server_does_not_answer(config_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ['backbones', 'add', 'gone', '--base-url', 'http://127.0.0.1:9/v1', '--model', 'x'],
        env={'TANDEM_HOME': str(tmp_path / 'h')},
    )
    assert result.exit_code == 0
    assert 'warning: probe: no answer from http://127.0.0.1:9/v1' in result.stderr


def test_cli_backbones_still_lists_and_probes_with_or_without_list(config_file: Path, tmp_path: Path) -> None:
    env = {'TANDEM_HOME': str(tmp_path / 'home')}
    plain = runner.invoke(app, ['backbones', '--timeout', '0.5'], env=env)
    listed = runner.invoke(app, ['backbones', 'list', '--timeout', '0.5'], env=env)
    assert plain.exit_code == 0 and listed.exit_code == 0
    assert 'local' in plain.stdout and 'no answer from http://127.0.0.1:8000/v1' in ' '.join(plain.stdout.split())
    assert plain.stdout == listed.stdout

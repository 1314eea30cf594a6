"""Backbones: names and model strings to models, autodetection, and probing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel

from tandem.agent.backbones import base as backbones
from tandem.agent.core.config import BackboneConfig, Settings
from tandem.agent.core.errors import BackboneError
from tests.support.fake_openai import FakeOpenAI, Text
from tests.support.loopback_http import refused_port


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(home=tmp_path, **values)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_ambient_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv('OPENAI_API_KEY', raising=False)
    monkeypatch.delenv('OPENAI_BASE_URL', raising=False)


@pytest.fixture
def no_local_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with refused_port() as ollama, refused_port() as vllm:
        monkeypatch.setattr(backbones, '_LOCAL_SERVERS', (('Ollama', ollama), ('vLLM', vllm)))
        yield


def test_openai_means_the_responses_api_and_openai_chat_the_chat_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('OPENAI_API_KEY', 'sk-test')
    responses = backbones.build_model(BackboneConfig(model='openai:gpt-4.1-mini'))
    chat = backbones.build_model(BackboneConfig(model='openai-chat:qwen2.5', base_url='http://127.0.0.1:9/v1'))
    assert isinstance(responses, OpenAIResponsesModel) and responses.model_name == 'gpt-4.1-mini'
    assert isinstance(chat, OpenAIChatModel) and chat.model_name == 'qwen2.5'
    assert chat.client.base_url == 'http://127.0.0.1:9/v1/'


def test_fine_tuned_ids_keep_their_colons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('OPENAI_API_KEY', 'sk-test')
    model = backbones.build_model(BackboneConfig(model='openai:ft:gpt-4.1-mini-2025-04-14:acme::abc123'))
    assert model.model_name == 'ft:gpt-4.1-mini-2025-04-14:acme::abc123'


def test_openai_base_url_is_honoured_like_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('OPENAI_BASE_URL', 'http://127.0.0.1:1234/v1')
    model = backbones.build_model(BackboneConfig(model='openai-chat:local'))
    assert isinstance(model, OpenAIChatModel)
    assert str(model.client.base_url) == 'http://127.0.0.1:1234/v1/'


def test_api_key_env_names_where_the_key_is(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackboneError, match='VLLM_KEY is not set'):
        backbones.build_model(BackboneConfig(model='openai-chat:x', base_url='http://h/v1', api_key_env='VLLM_KEY'))
    monkeypatch.setenv('VLLM_KEY', 'secret')
    model = backbones.build_model(BackboneConfig(model='openai-chat:x', base_url='http://h/v1', api_key_env='VLLM_KEY'))
    assert isinstance(model, OpenAIChatModel) and model.client.api_key == 'secret'


def test_openai_without_a_key_says_how_to_get_one() -> None:
    with pytest.raises(BackboneError, match='needs OPENAI_API_KEY'):
        backbones.build_model(BackboneConfig(model='openai:gpt-4.1-mini'))


async def test_an_unknown_backbone_lists_the_configured_ones(tmp_path: Path) -> None:
    settings = _settings(tmp_path, backbones={'local': {'model': 'openai-chat:x', 'base_url': 'http://h/v1'}})
    with pytest.raises(BackboneError, match=r"unknown backbone 'nope' \(known: local\)"):
        await backbones.resolve(settings, name='nope')


async def test_the_configured_default_backbone_is_used(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        backbone='tuned',
        backbones={
            'base': {'model': 'openai-chat:base', 'base_url': 'http://h/v1'},
            'tuned': {'model': 'openai-chat:lora-1', 'base_url': 'http://h/v1', 'kind': 'fine-tuned'},
        },
    )
    chosen = await backbones.resolve(settings)
    assert (chosen.name, chosen.kind, chosen.model.model_name) == ('tuned', 'fine-tuned', 'lora-1')


async def test_with_nothing_configured_an_api_key_means_openai(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('OPENAI_API_KEY', 'sk-test')
    chosen = await backbones.resolve(_settings(tmp_path))
    assert isinstance(chosen.model, OpenAIResponsesModel) and chosen.model.model_name == 'gpt-4.1-mini'


async def test_with_nothing_configured_a_local_server_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAI(models=['qwen2.5:3b']) as server, refused_port() as closed:
        port = int(server.url.rsplit(':', 1)[1].split('/')[0])
        monkeypatch.setattr(backbones, '_LOCAL_SERVERS', (('Ollama', closed), ('LM Studio', port)))
        chosen = await backbones.resolve(_settings(tmp_path))
        assert chosen.name == 'LM Studio:qwen2.5:3b'
        assert chosen.config.base_url == server.url


async def test_a_local_openai_base_url_means_chat_completions_and_the_servers_first_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI(models=['qwen2.5-3b', 'other']) as server:
        monkeypatch.setenv('OPENAI_API_KEY', 'sk-local')  # the usual setup for a local server: both are set
        monkeypatch.setenv('OPENAI_BASE_URL', server.url)
        chosen = await backbones.resolve(_settings(tmp_path))
    assert isinstance(chosen.model, OpenAIChatModel)
    assert (chosen.name, chosen.model.model_name) == ('openai-chat:qwen2.5-3b', 'qwen2.5-3b')


async def test_a_local_openai_base_url_that_lists_nothing_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with refused_port() as closed:
        monkeypatch.setenv('OPENAI_BASE_URL', f'http://127.0.0.1:{closed}/v1')
        with pytest.raises(BackboneError, match=r'lists no models \(GET /models\).*TANDEM_BACKBONE=openai-chat:'):
            await backbones.resolve(_settings(tmp_path))


async def test_openais_own_base_url_keeps_the_responses_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('OPENAI_API_KEY', 'sk-test')
    monkeypatch.setenv('OPENAI_BASE_URL', 'https://api.openai.com/v1')
    chosen = await backbones.resolve(_settings(tmp_path))
    assert isinstance(chosen.model, OpenAIResponsesModel)


@pytest.mark.usefixtures('no_local_servers')
async def test_with_nothing_at_all_the_message_names_four_ways(tmp_path: Path) -> None:
    with pytest.raises(BackboneError) as caught:
        await backbones.resolve(_settings(tmp_path))
    message = str(caught.value)
    assert 'export OPENAI_API_KEY' in message
    assert 'ollama serve' in message
    assert 'OPENAI_BASE_URL=' in message
    assert 'make local && tandem models pull qwen2.5-1.5b-instruct --register local' in message


async def test_probe_reports_reachability_listing_and_tool_calls() -> None:
    from tests.support.fake_openai import ToolCall

    with FakeOpenAI([ToolCall.one('add', a=2, b=3)], models=['tiny']) as server:
        good = await backbones.probe('local', BackboneConfig(model='openai-chat:tiny', base_url=server.url))
    with FakeOpenAI([Text('5')], models=['tiny']) as server:
        no_tools = await backbones.probe('local', BackboneConfig(model='openai-chat:tiny', base_url=server.url))
        unlisted = await backbones.probe('x', BackboneConfig(model='openai-chat:ghost', base_url=server.url))
    with refused_port() as closed:
        down = await backbones.probe(
            'down', BackboneConfig(model='openai-chat:x', base_url=f'http://127.0.0.1:{closed}/v1')
        )

    assert (good.reachable, good.listed, good.tool_calls) == (True, True, True)
    assert (no_tools.tool_calls, no_tools.detail) == (False, 'answered without a tool call')
    assert unlisted.listed is False
    assert (down.reachable, down.tool_calls) == (False, None)

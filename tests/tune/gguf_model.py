"""A tiny random-weight llama GGUF (and a LoRA adapter for it), written with the `gguf` package.

The model has the llama architecture with one layer, 32-dimensional embeddings, and a
SentencePiece-style vocabulary of the three special tokens, the 256 byte-fallback tokens (so any
text tokenizes) and a few pieces. llama.cpp loads it like any llama GGUF; what it generates is
gibberish, which is the point: tests exercise the real loading, templating, sampling and tool-call
parsing paths, not the quality of the answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_EMBD = 32
N_FF = 64
N_HEAD = 4
N_LAYER = 1
PIECES = ['▁', '▁a', 'a', 'b', 'c', '▁the', 'e', 't', 'h']


def write_tiny_llama(
    path: Path, *, context_length: int = 2048, seed: int = 0, chat_template: str | None = None
) -> Path:
    """Write the tiny model to `path` and return it."""
    import gguf

    writer = gguf.GGUFWriter(str(path), 'llama')
    tokens = ['<unk>', '<s>', '</s>', *(f'<0x{i:02X}>' for i in range(256)), *PIECES]
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        *[gguf.TokenType.BYTE] * 256,
        *[gguf.TokenType.NORMAL] * len(PIECES),
    ]
    writer.add_name('tandem-tiny-test')
    writer.add_context_length(context_length)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model('llama')
    writer.add_token_list(tokens)
    writer.add_token_types([int(kind) for kind in types])
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    rng = np.random.default_rng(seed)

    def weights(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    weights('token_embd.weight', len(tokens), N_EMBD)
    writer.add_tensor('output_norm.weight', np.ones(N_EMBD, np.float32))
    weights('output.weight', len(tokens), N_EMBD)
    for layer in range(N_LAYER):
        block = f'blk.{layer}'
        writer.add_tensor(f'{block}.attn_norm.weight', np.ones(N_EMBD, np.float32))
        for part in ('attn_q', 'attn_k', 'attn_v', 'attn_output'):
            weights(f'{block}.{part}.weight', N_EMBD, N_EMBD)
        writer.add_tensor(f'{block}.ffn_norm.weight', np.ones(N_EMBD, np.float32))
        weights(f'{block}.ffn_gate.weight', N_FF, N_EMBD)
        weights(f'{block}.ffn_down.weight', N_EMBD, N_FF)
        weights(f'{block}.ffn_up.weight', N_FF, N_EMBD)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_lora(path: Path, *, rank: int = 4, alpha: float = 8.0, seed: int = 1) -> Path:
    """Write a LoRA adapter for the tiny model's attention (q and v) to `path` and return it."""
    import gguf

    writer = gguf.GGUFWriter(str(path), 'llama')
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, 'lora')
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    rng = np.random.default_rng(seed)
    for layer in range(N_LAYER):
        for part in ('attn_q', 'attn_v'):
            name = f'blk.{layer}.{part}.weight'
            writer.add_tensor(f'{name}.lora_a', rng.standard_normal((rank, N_EMBD)).astype(np.float32))
            writer.add_tensor(f'{name}.lora_b', rng.standard_normal((N_EMBD, rank)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

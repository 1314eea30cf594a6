"""OpenAI fine-tuning prices and limits, for `tandem tune validate` estimates and tuned-backbone costs.

The table is OpenAI's published price list for supervised fine-tuning (USD per million tokens),
as checked on `PRICES_CHECKED`. Prices change: every command that uses it takes an override
(`--price-per-mtok`, `--context-limit`), and a registered backbone's inference prices can be edited
in the config (`input_price_per_mtok`, `output_price_per_mtok`).

| base model | training | tuned input | tuned output | example limit | encoding |
| --- | --- | --- | --- | --- | --- |
| gpt-4.1 (2025-04-14) | 25.00 | 3.00 | 12.00 | 65,536 | o200k_base |
| gpt-4.1-mini (2025-04-14) | 5.00 | 0.80 | 3.20 | 65,536 | o200k_base |
| gpt-4.1-nano (2025-04-14) | 1.50 | 0.20 | 0.80 | 65,536 | o200k_base |
| gpt-4o (2024-08-06) | 25.00 | 3.75 | 15.00 | 65,536 | o200k_base |
| gpt-4o-mini (2024-07-18) | 3.00 | 0.30 | 1.20 | 65,536 | o200k_base |
| gpt-3.5-turbo (0125) | 8.00 | 3.00 | 6.00 | 16,385 | cl100k_base |
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ['DEFAULT_BASE_MODEL', 'FINE_TUNE_PRICES', 'PRICES_CHECKED', 'FineTunePrice', 'price_for']

PRICES_CHECKED = '2025-06-01'
"""When the table was last compared with OpenAI's pricing page."""

DEFAULT_BASE_MODEL = 'gpt-4.1-mini-2025-04-14'


@dataclass(frozen=True)
class FineTunePrice:
    """What fine-tuning one base model costs, and what its fine-tunes cost to run."""

    model: str
    """The model-name prefix this row applies to."""
    training_per_mtok: float
    input_per_mtok: float
    """Inference price of the *fine-tuned* model, input tokens."""
    output_per_mtok: float
    context_limit: int
    """The largest training example, in tokens; longer ones are truncated by OpenAI."""
    encoding: str
    """The tiktoken encoding the model family uses."""


FINE_TUNE_PRICES: tuple[FineTunePrice, ...] = (
    FineTunePrice('gpt-4.1-mini', 5.00, 0.80, 3.20, 65_536, 'o200k_base'),
    FineTunePrice('gpt-4.1-nano', 1.50, 0.20, 0.80, 65_536, 'o200k_base'),
    FineTunePrice('gpt-4.1', 25.00, 3.00, 12.00, 65_536, 'o200k_base'),
    FineTunePrice('gpt-4o-mini', 3.00, 0.30, 1.20, 65_536, 'o200k_base'),
    FineTunePrice('gpt-4o', 25.00, 3.75, 15.00, 65_536, 'o200k_base'),
    FineTunePrice('gpt-3.5-turbo', 8.00, 3.00, 6.00, 16_385, 'cl100k_base'),
)


def price_for(model: str) -> FineTunePrice | None:
    """The row for `model` (a name such as `gpt-4.1-mini-2025-04-14` or `ft:gpt-4o-mini:…`), or `None`."""
    name = model.removeprefix('openai:').removeprefix('openai-chat:').removeprefix('openai-responses:')
    name = name.removeprefix('ft:')
    matches = [row for row in FINE_TUNE_PRICES if name == row.model or name.startswith(row.model + '-')]
    matches += [row for row in FINE_TUNE_PRICES if name.startswith(row.model + ':')]
    return max(matches, key=lambda row: len(row.model), default=None)

"""The prompting-vs-fine-tuning loop: export traces, validate them, fine-tune, register, compare.

- `agent.tune.export`: stored sessions or scenario runs → OpenAI chat fine-tuning JSONL;
- `agent.tune.validate`: line-by-line checks, token counts, epochs and cost;
- `agent.tune.jobs`: OpenAI fine-tuning jobs, submitted, followed and registered as backbones;
- `agent.tune.registry`: `[backbones.NAME]` written back into the user's TOML config;
- `agent.tune.compare`: base + full prompting + RAG vs base + short prompt vs tuned + short prompt;
- `agent.tune.scrub`, `agent.tune.pricing`: PII scrubbing, prices (token counts are `agent.core.tokens`');
- `agent.tune.examples`: example sets (few-shot) from the same traces and files as fine-tuning data.
"""

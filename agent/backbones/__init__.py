"""Backbones: a name or model string resolved to a pydantic-ai model (entry points `tandem.backbones`)."""

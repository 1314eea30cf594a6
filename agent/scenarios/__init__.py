"""Scripted task scenarios."""

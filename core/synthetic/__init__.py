"""Procedural data for the pack's default model (see `shapes`)."""

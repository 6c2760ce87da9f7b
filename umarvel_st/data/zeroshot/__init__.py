"""Readers of the zero-shot datasets' published layouts, video decoding, and their synthetic copies."""

"""Shared constants and checks of the hardening tests (imported as a plain module, like
tests/deploy/deploy_helpers.py)."""

from __future__ import annotations

TOKEN = "hardening-token"
LIMITS = dict(max_k=50, max_offset=100, max_query_chars=64, max_body_bytes=4096, max_filter_values=8)


def leaks(text: str, roots: tuple[str, ...]) -> list[str]:
    """Internal details a response must never show: a traceback, a Python frame, a server path."""
    found = [m for m in ("Traceback", 'File "', '.py"', "site-packages") if m in text]
    return found + [r for r in roots if r and r != "/" and r in text]

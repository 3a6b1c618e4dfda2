"""Offline evaluation: ranking metrics, cross-view retrieval, diagnostics."""

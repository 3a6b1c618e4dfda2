"""Artifacts on disk: versioned directories and their manifest, the listings store, the deny-list."""

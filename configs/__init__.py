"""Configs: `base.py` holds every field with its comment; dataset files override a few."""

"""Experiment configs (``get_config()`` files)."""

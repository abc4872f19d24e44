"""Experiments: configs and benchmarks; configs are loaded by path (see scoresde.config_loading)."""

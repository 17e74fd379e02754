"""Runnable serving examples for cirron (see README.md in this folder)."""

"""Helpers the tests share, each defined once: real audio, the misbehaving source server, the
service as a real process, a PostgreSQL server of the tests' own, a headless browser, the
process tree, speech calls, stores and their settings, and the command-line scripts' helpers."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository

"""Shared pytest fixtures.

The data-preparation fixtures live in ``prep_fixtures.py`` (session scope:
each prepared corpus is built once per test run and shared by test files).
"""

from prep_fixtures import synthetic_prepared, tiny_librispeech  # noqa: F401

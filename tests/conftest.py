"""Shared pytest fixtures.

The data-preparation fixtures live in ``prep_fixtures.py`` (session scope:
each prepared corpus is built once per test run and shared by test files).
The tiny training corpus ``corpus`` is defined in ``test_train.py``.
"""

from prep_fixtures import synthetic_prepared, tiny_librispeech  # noqa: F401
from test_train import corpus  # noqa: F401  (the tiny training corpus, also used by test_train_kd.py)

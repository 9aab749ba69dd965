"""Typed run and sweep configs (see schema.py)."""

from harness.config.schema import *  # noqa: F403
from harness.config.schema import (  # noqa: F401
    _HASH_OMIT_AT_DEFAULT,
    _format_error,
    _training_argument_names,
)

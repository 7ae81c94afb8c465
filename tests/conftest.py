"""Runs before the test modules import jax: runs.py's XLA and OpenBLAS settings, as every script has them, and a
throwaway persistent compilation cache, so that tests (and test workers) that build the same program compile it once.
XLA skips most of its optimisations (JAX_DISABLE_MOST_OPTIMIZATIONS): most tests' tiny programs spend their time
compiling, about half of it optimising code that then runs for milliseconds. Tests that train for longer turn them
back on (`optimized`, `xla_optimized`)."""
import contextlib
import os
import sys
import tempfile

import pytest

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runs  # noqa: E402, F401
import jax  # noqa: E402


@contextlib.contextmanager
def xla_optimized():
    """XLA's optimisations on while programs are compiled inside, as the scripts run them."""
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def optimized():
    """For a test whose time goes into running its programs rather than compiling them."""
    with xla_optimized():
        yield

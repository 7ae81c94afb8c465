"""Runs before the test modules import jax: runs.py's XLA and OpenBLAS settings, as every script has them, and a
throwaway persistent compilation cache, so that tests (and test workers) that build the same program compile it once.
XLA skips most of its optimisations (JAX_DISABLE_MOST_OPTIMIZATIONS): the tests' tiny programs spend most of their
time compiling, about half of it optimising code that then runs for milliseconds."""
import os
import sys
import tempfile

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runs  # noqa: E402, F401

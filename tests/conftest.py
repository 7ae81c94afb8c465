"""Runs before the test modules import jax: runs.py's XLA and OpenBLAS settings, as every script has them, and a
throwaway persistent compilation cache, so that tests (and test workers) that build the same program compile it once."""
import os
import sys
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runs  # noqa: E402, F401

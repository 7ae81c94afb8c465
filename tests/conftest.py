"""Runs before the test modules import jax.
- XLA CPU's concurrency-optimised scheduler can deadlock larger vmapped programs (every thread idle), so it is
  switched off, as in every script of the repo.
- A throwaway persistent compilation cache lets tests that build the same program twice compile it once."""
import os
import tempfile

if "xla_cpu_enable_concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_concurrency_optimized_scheduler=false")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

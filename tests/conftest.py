"""Runs before the test modules import jax.
- XLA CPU's concurrency-optimised scheduler can deadlock larger vmapped programs (every thread idle), so it is
  switched off, as in every script of the repo; LAPACK runs on one thread (see ppo.py).
- A throwaway persistent compilation cache lets tests that build the same program twice compile it once."""
import os
import tempfile

if "xla_cpu_enable_concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_concurrency_optimized_scheduler=false")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # LAPACK (the orthogonal init's QR) on one thread: with XLA's
# threads on the same cores, OpenBLAS's own threads turned a 400 x 64 QR from 0.5 ms into 0.3-1 s.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

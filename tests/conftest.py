"""Runs before the test modules import jax: XLA CPU's concurrency-optimised scheduler can deadlock larger vmapped
programs (every thread idle), so it is switched off, as in every script of the repo."""
import os

if "xla_cpu_enable_concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_concurrency_optimized_scheduler=false")

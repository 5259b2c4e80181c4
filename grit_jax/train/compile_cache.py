"""XLA's persistent compilation cache for training runs, and a count of its hits and misses.

Compiling a 7B step takes minutes; with the cache a restarted or resumed run of the same config loads
the compiled programs instead. JAX writes entries for programs that took at least
``jax_persistent_cache_min_compile_time_secs`` (1 s by default) to compile.
"""

from __future__ import annotations

import os

import jax

_HIT, _MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


class CompileCache:
    """Turns the cache on in ``directory`` and counts what it finds from now on."""

    def __init__(self, configured: str, workdir: str):
        self.directory = (
            configured or jax.config.jax_compilation_cache_dir or os.path.join(workdir, "compile_cache")
        )
        jax.config.update("jax_compilation_cache_dir", self.directory)
        self.hits = self.misses = 0
        jax.monitoring.register_event_listener(self._count)

    def _count(self, event: str, **_):
        if event == _HIT:
            self.hits += 1
        elif event == _MISS:
            self.misses += 1

    def summary(self) -> str:
        return f"compilation cache {self.directory}: {self.hits} hits, {self.misses} misses"

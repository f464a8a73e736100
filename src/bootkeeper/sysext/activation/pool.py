"""Forked worker processes for one round of copying and judging: started on first use (they inherit
the descriptors open then), started again after one died, and each dies with this process
(:func:`bootkeeper.sysext.verity.worker_init`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class WorkerDied(Exception):
    """The worker process running a call died (alone in its pool: the call's own fault)."""


class Workers:
    """Up to ``n`` forked worker processes: a round's copying and judging run in the same ones."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(
        self, fn: Callable[..., R], calls: Mapping[K, tuple[object, ...]], results: dict[K, R | Exception]
    ) -> list[K]:
        """``fn(*args)`` of each call into ``results`` (an exception raised is the result); the keys
        whose pool broke. No pool at all: nothing done, nothing broken (the caller runs what is
        left in this process)."""
        from concurrent.futures.process import BrokenProcessPool

        broken = []
        try:
            pool = self._pool if self._pool is not None else self._start()
            futures = {k: pool.submit(fn, *args) for k, args in calls.items()}
            for k, f in futures.items():
                try:
                    results[k] = f.result()
                except BrokenProcessPool:
                    broken.append(k)
                except Exception as exc:
                    results[k] = exc
        except Exception:  # no pool at all: the caller does the rest in this process
            pass
        if broken:
            self.close()  # a broken pool takes no more work: the next run starts a new one
        return broken

    def _start(self) -> ProcessPoolExecutor:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from bootkeeper.sysext.verity import worker_init

        ctx = multiprocessing.get_context("fork")
        self._pool = ProcessPoolExecutor(self.n, mp_context=ctx, initializer=worker_init, initargs=(os.getpid(),))
        return self._pool

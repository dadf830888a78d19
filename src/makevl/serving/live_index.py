"""The index a running server answers from, swapped when a new version is published.

``makevl index build|add|delete`` publish a new version folder by swapping the
index symlink (:mod:`makevl.index.store`). A watcher thread looks at where the
link points every ``poll_s`` seconds; when it moves, the new version is loaded
in full (checksums verified) and warmed with one search, and only then becomes
:attr:`LiveIndex.current`. A request takes ``current`` once, at its start, and
uses that :class:`Searcher` throughout, so it sees one version even while a
swap happens. If the new version fails to load, the old one keeps serving and
:attr:`LiveIndex.error` says why (``/healthz`` reports it).

The query encoder is reused when the new manifest names the same model hash,
so an update does not reload the model.

After each load the heap is settled (:func:`settle_heap`): a loaded model and
index are hundreds of thousands of long-lived Python objects, and without it
Python's full garbage collection walked all of them every few seconds under
load, stopping the server for 300-390 ms each time (docs/BENCHMARKS.md,
"Server under load").
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from makevl.index.search import Searcher
from makevl.index.store import read_manifest

log = logging.getLogger("makevl.serving")
WARM_QUERY = "warm up"


def index_version(searcher: Searcher) -> str:
    """The version a searcher serves: the name of its version folder."""
    return searcher.path.name


def load_version(version: Path, current: Searcher, **searcher_options: Any) -> Searcher:
    """A Searcher of ``version``, reusing ``current``'s encoder when the model is the same."""
    if read_manifest(version)["model_hash"] == current.model_hash:
        options = {k: v for k, v in searcher_options.items() if k not in ("encoder", "checkpoint")}
        return Searcher(version, encoder=current.encoder, model_hash=current.model_hash, **options)
    # a new model: load it (it must match the checkpoint the server was started with)
    return Searcher(version, **searcher_options)


def settle_heap() -> None:
    """Move every object alive now out of the garbage collector's sight.

    Called once a version is loaded, so that the periodic full collection
    walks only what requests create, not the model and index (``gc.freeze``).
    The objects stay freed by reference counting as usual; the ones frozen at
    the previous call are unfrozen and collected first, so an old version's
    reference cycles do not outlive the next load.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class LiveIndex:
    """``current``: the Searcher of the newest loadable version of ``first``'s index.

    ``searcher_options`` (``checkpoint``, ``ef_search``, ...) load later
    versions as they loaded the first. ``prepare(searcher)``, if given, runs on
    a loaded version before it is served (the search worker process loads it too).
    """

    def __init__(
        self,
        first: Searcher,
        *,
        poll_s: float = 1.0,
        prepare: Callable[[Searcher], None] | None = None,
        **searcher_options: Any,
    ) -> None:
        self.current = first
        self.prepare = prepare
        self.index_dir = first.index_dir
        self.poll_s = poll_s
        self.error: str | None = None  # why the newest version is not served, if it is not
        self.reloads = 0
        self._options = searcher_options
        self._failed: Path | None = None  # a version that failed to load; not retried
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def version(self) -> str:
        return index_version(self.current)

    def start(self) -> None:
        """Watch for new versions in a background thread."""
        settle_heap()
        if self._watcher is None and self.poll_s > 0:
            self._stop.clear()
            self._watcher = threading.Thread(
                target=self._watch, name="makevl-index-watch", daemon=True
            )
            self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # the watcher must outlive any surprise
                log.exception("checking %s for a new version failed", self.index_dir)

    def check(self) -> bool:
        """Load and switch to the published version if it changed; True if switched."""
        target = self.index_dir.resolve()
        if target in (self.current.path, self._failed):
            return False
        try:
            searcher = self._load(target)
        except (OSError, ValueError, RuntimeError) as exc:
            if self.index_dir.resolve() != target:
                return False  # superseded (and deleted) while loading: the next check loads it
            self._failed = target
            self.error = f"version {target.name} not loaded: {exc}"
            log.error("%s; still serving version %s", self.error, self.version)
            return False
        old = self.version
        self.current, self.error, self._failed = searcher, None, None
        settle_heap()  # after the swap, so that the old version's cycles are freed now
        self.reloads += 1
        log.info("%s: now serving version %s (was %s)", self.index_dir, self.version, old)
        return True

    def _load(self, version: Path) -> Searcher:
        searcher = load_version(version, self.current, **self._options)
        if self.prepare is not None:
            self.prepare(searcher)
        # The first search pays for page faults and lazy initialisation, not a client. (Safe
        # beside the search worker: encoders encode in eval mode without changing state.)
        searcher.search([WARM_QUERY], k=1)
        return searcher

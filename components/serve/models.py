"""The live model: loaded and warmed before the server says it is ready, and swapped when the registry's LATEST moves.

A registry model root is polled: when LATEST names another version, that version is loaded and warmed beside the
live one, then becomes the live one. A request keeps the model it started with (the batcher's items hold it), so
requests in flight finish on the old version; nothing refers to it afterwards and it is freed. A version that fails
to load is logged and not tried again until LATEST changes; the live version goes on serving.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Awaitable, Callable

from components.common import model_card, registry, storage

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class Loaded:
    """One loaded, warmed model and what the responses say about it."""

    scorer: Any  # components.common.inference.Scorer (or a test's fake with score() and warmup())
    version: str | None  # the registry version, None for a plain model folder
    uri: str  # the version or model folder it was loaded from
    card: dict | None  # the version's model_card.json (push writes it), None when it has none
    card_markdown: str | None  # its model_card.md
    card_error: str  # why card is None, for GET /model-card's 404
    seconds: float  # load and warmup time


def model_uri(model: str, model_name: str = "") -> str:
    """The URI to serve: <model>/<model_name> when model is a registry destination holding that model's LATEST
    (--model runs/registry --model-name au-detector), else model itself (a model root, a version or a model folder)."""
    if model_name and storage.exists(storage.join(model, model_name, registry.LATEST)):
        return registry.model_root(model, model_name)
    return model


def read_card(uri: str) -> tuple[dict | None, str | None, str]:
    """(model_card.json, model_card.md, "") of a version or model folder, or (None, None, why not)."""
    try:
        return model_card.read(uri), model_card.read(uri, markdown=True), ""
    except model_card.ModelCardError as e:
        return None, None, str(e)


class LiveModel:
    """The model the server answers with, and the task that follows the registry's LATEST.

    load(uri) makes a scorer of a version or model folder (in a worker thread); warm(fn) runs fn (the scorer's
    warmup: its face-finding threads started, each detector and the model run once) on a scorer thread.
    """

    def __init__(self, model_uri: str, load: Callable[[str], Any], warm: Callable[[Callable[[], None]], Awaitable],
                 poll_s: float = 2.0):
        self.model_uri = model_uri.rstrip("/") if len(model_uri) > 1 else model_uri
        self._load = load
        self._warm = warm
        self.poll_s = poll_s
        self.current: Loaded | None = None
        self.error: str | None = None  # why the first load failed: the server cannot become ready
        self.follows: bool | None = None  # True when model_uri is a registry model root; known after start()
        self._failed: str | None = None  # the LATEST value whose version failed to load
        self._settled = asyncio.Event()  # set once the first load has succeeded or failed
        self.swaps = 0

    @property
    def ready(self) -> bool:
        return self.current is not None

    async def wait_settled(self) -> bool:
        """Waits until the first load has succeeded (True) or failed (False)."""
        await self._settled.wait()
        return self.ready

    async def _load_version(self, uri: str, version: str | None) -> Loaded:
        start = time.perf_counter()
        scorer = await asyncio.to_thread(self._load, uri)
        await self._warm(scorer.warmup)
        card, markdown, card_error = await asyncio.to_thread(read_card, uri)
        version = getattr(scorer, "version", None) or version
        return Loaded(scorer, version, uri, card, markdown, card_error, time.perf_counter() - start)

    def _target(self) -> tuple[str, str | None]:
        """(folder to load, its version): LATEST's version of a registry root, else the URI itself."""
        if self.follows:
            found = registry.live_version(self.model_uri)
            if found is None:
                raise registry.RegistryError(f"{storage.join(self.model_uri, registry.LATEST)} has disappeared")
            version, uri = found
            return uri, version
        return self.model_uri, None

    async def start(self) -> None:
        """Loads and warms the first model (raises when it cannot), then follows LATEST until cancelled."""
        try:
            self.follows = await asyncio.to_thread(storage.exists, storage.join(self.model_uri, registry.LATEST))
            uri, version = await asyncio.to_thread(self._target)
            self.current = await self._load_version(uri, version)
        except Exception as e:
            self.error = f"the model {self.model_uri} cannot be served: {e}"
            raise
        finally:
            self._settled.set()
        log.info("serving %s%s (loaded and warmed in %.1f s)", self.current.uri,
                 f", version {self.current.version}" if self.current.version else "", self.current.seconds)
        if not self.follows or self.poll_s <= 0:
            return
        while True:
            await asyncio.sleep(self.poll_s)
            await self.poll_once()

    async def poll_once(self) -> bool:
        """Reads LATEST once; loads, warms and swaps in the version it names when that is new. True on a swap."""
        try:
            latest = await asyncio.to_thread(registry.read_latest, self.model_uri)
        except Exception as e:  # noqa: BLE001 - a registry that cannot be read now (GCS hiccup) is read next time
            log.warning("cannot read %s/%s: %s; still serving version %s", self.model_uri, registry.LATEST, e,
                        self.current.version if self.current else None)
            return False
        if latest is None or self.current is None or latest == self.current.version or latest == self._failed:
            return False
        try:
            uri, version = await asyncio.to_thread(self._target)
            if version != latest:  # LATEST moved again while we read it: the next poll takes the newest
                return False
            log.info("LATEST names version %s: loading it beside version %s", version, self.current.version)
            new = await self._load_version(uri, version)
        except Exception as e:  # noqa: BLE001 - a bad push must not take the live model down
            self._failed = latest
            log.error("version %s named by %s/%s cannot be served (%s); still serving version %s; push a working "
                      "model to move LATEST again", latest, self.model_uri, registry.LATEST, e, self.current.version)
            return False
        old, self.current = self.current, new
        self.swaps += 1
        log.info("now serving version %s (loaded and warmed in %.1f s); version %s finishes its requests in flight",
                 new.version, new.seconds, old.version)
        return True

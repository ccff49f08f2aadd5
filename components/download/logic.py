"""The download step: fetches every image of the manifest with retries, keeping a per-URL ledger that makes a rerun resume.

How a run goes:
- the manifest is checked and sorted by key, then streamed in batches of rows; each row is joined
  with what the output folder and the store already know (their ledger.parquet, into which the
  journals a killed run left are folded first): an image already there
  or a permanent failure is carried over, an image the store has is copied, anything else
  (never tried, or a transient failure) is fetched;
- a pool of worker threads fetches (fetch.py); a transient failure is tried again after an
  exponential backoff with full jitter, or after the server's Retry-After;
- each image is written to a temp name and renamed; only then is its ledger row appended to the
  journal, fsync'd in batches, and sent to the store; so a run killed at any instant leaves
  no row that claims a missing file, and the next run redoes only what was never settled;
- at the end the journals are folded into ledger.parquet (this manifest's rows only) and
  download_summary.json, and the summary table is printed.

Memory stays bounded whatever the manifest's size: at most `workers * INFLIGHT_PER_WORKER` URLs
are in flight (being fetched, queued, or waiting out a backoff); the manifest is checked and sorted
by key, and the ledgers are read, joined and compacted, a batch at a time through sorted runs on
disk (merge.py, in the output's `.work/` while the run lasts), never held whole. URLs are fetched
in key order, which, keys being hashes of the URLs, spreads each host's URLs over the run.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections import Counter, deque
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from components.common import ledger as contract
from components.common import progress as progress_lines
from components.common import storage
from components.common.errors import StepRefusal
from components.common.labels import image_key
from components.common.manifest import MANIFEST_FILE, manifest_path
from components.download import ledger, merge
from components.download import store as stores
from components.download.fetch import Fetcher, ImageProblem, backoff_delay, inspect_image
from components.download.params import DEADLINE_FACTOR, SPEC

WORK_DIR = ".work"  # sorted runs while a run lasts
KEY_PATTERN = re.compile(r"[0-9a-f]{20}")
BATCH_ROWS = 1024
# URLs in flight (being fetched, queued, or waiting out a backoff) per worker. Generous, so that
# URLs waiting to be retried do not starve the workers; a task is a few hundred bytes.
INFLIGHT_PER_WORKER = 64
# The journal is fsync'd (and sent to the store) when it holds this many new rows or is this old.
FLUSH_ROWS = 256
FLUSH_SECONDS = 0.5
# progress=PROGRESS_LINES: progress lines on stdout for a pipeline's console instead of the bar on stderr.
PROGRESS_LINES = "lines"
POLL_SECONDS = 0.05
_DROPPED = object()  # an attempt cut short by a stop: left unsettled, for the next run


class DownloadError(StepRefusal):
    """Bad input or an unusable folder; the message names the file, the row or the URL, and what to do."""


class DownloadInterrupted(Exception):
    """The run was stopped (Ctrl-C, SIGTERM); what was settled is in the ledger and a rerun resumes."""


def _check(self) -> None:
    for name in ("workers", "max_attempts", "max_bytes", "max_pixels", "per_host"):
        if int(getattr(self, name)) < 1:
            raise DownloadError(f"{name} is {getattr(self, name)}; it must be at least 1")
    for name in ("timeout",):
        if not float(getattr(self, name)) > 0:
            raise DownloadError(f"{name} is {getattr(self, name)}; it must be more than 0 seconds")
    for name in ("deadline", "backoff", "backoff_max", "retry_after_max", "max_redirects"):
        if float(getattr(self, name)) < 0:
            raise DownloadError(f"{name} is {getattr(self, name)}; it must not be negative")
    if not self.deadline:
        self.deadline = DEADLINE_FACTOR * self.timeout


# Every knob of a fetch: one field per parameter of the declaration (params.py: same name, type and default) but the
# store and min_ok, which are the run's, not a fetch's. check() refuses nonsense and fills the deadline.
_RUN_ONLY = ("store", "min_ok")
Settings = dataclasses.make_dataclass(
    "Settings", [(p.name, p.type, dataclasses.field(default=p.default)) for p in SPEC.params
                 if p.name not in _RUN_ONLY],
    namespace={"check": _check, "__doc__": "Every knob of a fetch, one field per parameter of SPEC (its name, type and "
                                           "default), but the run's store and min_ok."})


def run(
    manifest_dir: str,
    output_dir: str,
    store: str = SPEC.defaults.store,
    workers: int = SPEC.defaults.workers,
    timeout: float = SPEC.defaults.timeout,
    max_attempts: int = SPEC.defaults.max_attempts,
    max_bytes: int = SPEC.defaults.max_bytes,
    allow_private: bool = SPEC.defaults.allow_private,
    *,
    deadline: float = SPEC.defaults.deadline,
    max_pixels: int = SPEC.defaults.max_pixels,
    max_redirects: int = SPEC.defaults.max_redirects,
    per_host: int = SPEC.defaults.per_host,
    retry_permanent: bool = SPEC.defaults.retry_permanent,
    backoff: float = SPEC.defaults.backoff,
    backoff_max: float = SPEC.defaults.backoff_max,
    retry_after_max: float = SPEC.defaults.retry_after_max,
    user_agent: str = SPEC.defaults.user_agent,
    progress: bool | str = True,
    print_table: bool = True,
    min_ok: float | None = SPEC.defaults.min_ok,
) -> dict:
    """Downloads the manifest's images into output_dir (images/, ledger.parquet, download_summary.json).

    Returns the summary. Raises DownloadError on bad input, and when no image (or fewer than a
    min_ok share of the URLs) was fetched, naming the top error classes and what to check;
    DownloadInterrupted when stopped. In every case everything settled so far is kept and a
    rerun with the same folders resumes. min_ok=None only settles the URLs (benchmarks, tools).
    progress: True for a bar on stderr (the CLI), PROGRESS_LINES for progress lines on stdout (a
    pipeline's console: components.common.progress), False for neither.
    """
    if min_ok is not None and not 0.0 <= float(min_ok) <= 1.0:
        raise DownloadError(f"min_ok is {min_ok}; expected a share of the URLs between 0 and 1 (0: at least one image)")
    given = locals()
    settings = Settings(**{f.name: f.type(given[f.name]) for f in dataclasses.fields(Settings)})
    settings.check()
    if storage.is_gcs(output_dir):
        raise DownloadError(f"output {output_dir}: must be a local folder; give the gs:// prefix as --store to keep images there")
    output_dir = os.path.abspath(output_dir)
    if store and not storage.is_gcs(store) and os.path.abspath(store) == output_dir:
        raise DownloadError(f"the store and the output are both {output_dir}; give the store a folder of its own")
    with stores.FolderLock(output_dir, "the output folder"):
        # Sorted runs of the manifest and the ledgers go here: on the output's disk, sized for the images.
        workdir = os.path.join(output_dir, WORK_DIR)
        shutil.rmtree(workdir, ignore_errors=True)
        os.makedirs(workdir)
        try:
            manifest_path = _manifest_path(manifest_dir, workdir)
            manifest, rows = check_manifest(manifest_path, workdir)
            summary = _Run(manifest, rows, output_dir, store, settings, progress, print_table, workdir).execute()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if min_ok is not None:
        check_enough(summary, float(min_ok))
    return summary


# What to check when most URLs fail with one class, in the words of the person who runs it.
_HINTS = {
    "connection_refused": "is the image server running and reachable from here?",
    "timeout": "is the network slow or a firewall dropping packets? raise --timeout, or check the hosts from here",
    "connection_reset": "is a proxy or firewall cutting connections?",
    "network": "does this machine reach the network (route, proxy settings)?",
    "dns": "do the host names resolve from here (DNS, an offline machine, hosts that no longer exist)?",
    "tls": "does a proxy intercept TLS, or are the hosts' certificates invalid?",
    "http_404": "are the URLs still current? web images disappear over the years",
    "http_4xx": "do the hosts refuse this client (403: a User-Agent or rate limit)?",
    "http_5xx": "are the hosts failing? transient failures are retried on the next run",
    "invalid_url": "are the URLs in the sheet well formed (http/https), and are private addresses allowed "
                   "(--download-allow-private) where the server is on this network?",
    "not_image": "do the URLs point at web pages instead of the images?",
    "too_large": "raise --max-bytes if the images are really this big",
    "redirect": "do the URLs redirect in loops or to login pages?",
}


def check_enough(summary: dict, min_ok: float) -> None:
    """DownloadError when no image, or fewer than min_ok of the URLs, was fetched; the message names the top
    error classes and what to check (the ledger and summary are already written, so a rerun resumes)."""
    total, ok = int(summary.get("total", 0)), int(summary.get("ok", 0))
    if not total or (ok and ok >= min_ok * total):
        return
    failures = sorted(((n, c) for c, n in summary.get("counts", {}).items() if c != contract.OK and n), reverse=True)
    top = ", ".join(f"{c} {n} ({100.0 * n / total:.0f}%)" for n, c in failures[:3])
    hint = _HINTS.get(failures[0][1], "see the ledger's message column") if failures else ""
    need = f"fewer than --min-ok {min_ok:.0%} of them" if ok else "none"
    raise DownloadError(
        f"{ok} of {total} images downloaded ({need}): {top}. {hint[0].upper() + hint[1:]} "
        "The ledger keeps every URL's error; rerun when it is fixed (transient failures are fetched again)"
    )


def _manifest_path(manifest_dir: str, workdir: str) -> str:
    path = manifest_path(manifest_dir)
    if not storage.exists(path):
        raise DownloadError(f"manifest {path} not found; expected the folder written by the ingest step (with {MANIFEST_FILE})")
    return storage.local_copy(path, workdir)


def check_manifest(path: str, workdir: str) -> tuple[str, int]:
    """Checks that each key of the manifest is image_key(url) and appears once; returns the manifest's
    (key, url) sorted by key, as a file in workdir, and its number of rows.

    Sorted out of memory (merge.py), so a manifest of any size is checked in bounded memory.
    """
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise DownloadError(f"manifest {path} is not a readable parquet file ({e}); expected the ingest step's manifest") from e
    names = pf.schema_arrow.names
    missing = [c for c in ("key", "url") if c not in names]
    if missing:
        raise DownloadError(f"manifest {path} has no column {', '.join(missing)}; expected contract 1 (key, url, AU1..AU60, row)")
    has_row = "row" in names
    spiller = merge.Spiller(workdir, "manifest")
    offset = 0
    for batch in pf.iter_batches(batch_size=16 * BATCH_ROWS, columns=["key", "url"] + (["row"] if has_row else [])):
        keys = _as_string(batch.column(0))
        rows = batch.column(2).to_pylist() if has_row else list(range(offset + 1, offset + 1 + batch.num_rows))
        for key, url, row in zip(keys.to_pylist(), batch.column(1).to_pylist(), rows):
            if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
                raise DownloadError(f"manifest {path}, row {row}: key {key!r} is not 20 lowercase hex digits; re-run the ingest step")
            if not isinstance(url, str) or image_key(url) != key:
                raise DownloadError(
                    f"manifest {path}, row {row}: key {key} is not image_key(url) for URL {url!r}; "
                    "the manifest was edited or corrupted; re-run the ingest step")
        spiller.add(pa.table({"key": keys, "url": _as_string(batch.column(1)),
                              "row": pa.array(rows, pa.int64())}))
        offset += batch.num_rows
    # One pass over the merged runs writes the sorted manifest and finds keys that repeat: a key's rows
    # all come in one step of the merge.
    sorted_path = os.path.join(workdir, "manifest.sorted.arrow")
    schema = pa.schema([("key", pa.string()), ("url", pa.string()), ("row", pa.int64())])
    repeats, first = 0, None

    def steps():
        nonlocal repeats, first
        for t in merge.merge_tables([merge.read_batches(r) for r in spiller.finish()]):
            keys = t["key"].combine_chunks()
            if t.num_rows > 1:
                # A key equal to the one before it repeats.
                dups = keys.slice(1).filter(pc.equal(keys.slice(1), keys.slice(0, t.num_rows - 1)))
                if len(dups):
                    repeats += len(pc.unique(dups))
                    if first is None:
                        key = dups[0].as_py()
                        first = (key, t.filter(pc.equal(t["key"], key))["row"].to_pylist())
            yield t

    merge.write_run(steps(), sorted_path, schema)
    if first is not None:
        key, at = first
        raise DownloadError(
            f"manifest {path}: key {key} appears {len(at)} times (rows {', '.join(map(str, at))}; {repeats} keys repeat); "
            "the manifest must hold each URL once; re-run the ingest step")
    return sorted_path, spiller.rows


def _as_string(array: pa.Array) -> pa.Array:
    return array if array.type == pa.string() else array.cast(pa.string())


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Task:
    key: str
    url: str
    attempts_before: int = 0  # attempts made by earlier runs
    first_attempt: str | None = None
    copy: dict | None = None  # the store's ok row: copy its image instead of fetching
    adopt: str | None = None  # the format of an image a killed run wrote but did not journal
    tries: int = 0  # attempts made by this run


class _Scheduler:
    """Hands tasks to the workers: fresh ones in the order fed (key order), retries when their backoff is over.

    submit() blocks while `capacity` tasks are in flight, which is what bounds memory.
    Retries wait in a heap ordered by due time, so a backoff never holds a worker.
    """

    def __init__(self, capacity: int):
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._space = threading.Condition(self._lock)
        self._ready: deque[_Task] = deque()
        self._later: list[tuple[float, int, _Task]] = []
        self._seq = 0
        self._inflight = 0
        self._capacity = capacity
        self._closed = False
        self.stopped = False

    def submit(self, task: _Task) -> bool:
        with self._lock:
            while self._inflight >= self._capacity and not self.stopped:
                self._space.wait()
            if self.stopped:
                return False
            self._inflight += 1
            self._ready.append(task)
            self._work.notify()
            return True

    def later(self, task: _Task, due: float) -> None:
        with self._lock:
            self._seq += 1
            heapq.heappush(self._later, (due, self._seq, task))
            self._work.notify()

    def get(self) -> _Task | None:
        with self._lock:
            while True:
                if self.stopped:
                    return None
                now = time.monotonic()
                if self._later and self._later[0][0] <= now:
                    return heapq.heappop(self._later)[2]
                if self._ready:
                    return self._ready.popleft()
                if self._closed and self._inflight == 0:
                    return None
                self._work.wait(self._later[0][0] - now if self._later else None)

    def done(self) -> None:
        with self._lock:
            self._inflight -= 1
            # The feeder is woken once half the room is free, not per task: it then submits in a burst.
            if self._inflight <= self._capacity // 2:
                self._space.notify()
            if self._inflight == 0 and self._closed:
                self._work.notify_all()

    def close(self) -> None:
        """No more fresh tasks: the workers end once the ones in flight are settled."""
        with self._lock:
            self._closed = True
            self._work.notify_all()

    def stop(self) -> None:
        """End now: tasks not yet settled stay unsettled and the next run does them."""
        with self._lock:
            self.stopped = True
            self._work.notify_all()
            self._space.notify_all()

    @property
    def retrying(self) -> int:
        return len(self._later)


class _Run:
    def __init__(self, manifest, total, output_dir, store_uri, settings: Settings, progress, print_table, workdir):
        self.manifest = manifest  # (key, url) sorted by key: check_manifest()
        self.total = total
        self.workdir = workdir
        self.prior: str | None = None  # a key-sorted ledger of what the output and the store knew at the start
        self.output = output_dir
        self.store_uri = store_uri
        self.s = settings
        self.progress = progress
        self.print_table = print_table
        self.run_id = stores.new_run_id()
        self.store = stores.open_store(store_uri, self.run_id)
        self.results: deque = deque()  # rows (and Counters of carried rows) for the main thread
        self.finished = threading.Event()
        self.sched = _Scheduler(max(settings.workers * INFLIGHT_PER_WORKER, 8))
        self.counts: Counter = Counter()  # error class -> URLs of this manifest settled so far
        self.stats: Counter = Counter()  # what this run did: fetched, copied, carried, retries
        self._stats_lock = threading.Lock()
        self.fatal: BaseException | None = None
        self.fetcher: Fetcher | None = None
        self.journal: stores.Journal | None = None
        self.maybe_orphans = False

    # --- the whole run ---
    def execute(self) -> dict:
        started, t0 = _now(), time.monotonic()
        # Pillow warns about large images before we get to refuse them with our own pixel limit.
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        stores.prepare_folder(self.output)
        ledger.fold_journals(self.output, self.workdir)  # what a killed run settled
        with os.scandir(os.path.join(self.output, contract.IMAGES_DIR)) as it:
            self.maybe_orphans = any(True for _ in it)
        if self.store is not None:
            self.store.open()
        interrupted = pumped = False
        try:
            self.prior = self._load_prior()
            self.journal = stores.Journal(self.output, self.run_id)
            self.fetcher = Fetcher(
                per_host=self.s.per_host, timeout=self.s.timeout, deadline=self.s.deadline,
                max_bytes=self.s.max_bytes, max_pixels=self.s.max_pixels, max_redirects=self.s.max_redirects,
                allow_private=self.s.allow_private, user_agent=self.s.user_agent,
                num_pools=max(64, 4 * self.s.workers),
            )
            try:
                self._pump()
            except KeyboardInterrupt:
                interrupted = True
                self.sched.stop()
                self.fetcher.abort()
                self._collect()
            pumped = True
        finally:
            if self.fetcher is not None:
                self.fetcher.close()
            if self.journal is not None:
                self.journal.close()
            if self.store is not None:
                # After an error the store's journals are left for the next run to fold in.
                self.store.close(compact=pumped and self.fatal is None)
        summary = ledger.compact(self.output, keep=self.manifest, verify_files=True,
                                 base=self.prior if self.store is not None else None, workdir=self.workdir)
        for leftover in (os.path.join(self.output, stores.PARTIAL_DIR), os.path.join(self.output, ledger.JOURNAL_DIR)):
            try:
                os.rmdir(leftover)  # only when empty
            except OSError:
                pass
        seconds = time.monotonic() - t0
        summary["complete"] = not interrupted and self.fatal is None and summary["total"] == self.total
        summary["run"] = {
            "started": started,
            "finished": _now(),
            "seconds": round(seconds, 3),
            "requests": self.fetcher.requests if self.fetcher else 0,
            "fetched_ok": self.stats["fetched_ok"],
            "fetched_failed": self.stats["fetched_failed"],
            "copied_from_store": self.stats["copied"],
            "adopted": self.stats["adopted"],
            "carried_over": self.stats["carried"],
            "retries": self.stats["retries"],
            "images_per_s": round(self.stats["fetched_ok"] / seconds, 2) if seconds > 0 else 0.0,
            "store": self.store_uri,
            "settings": {k: v for k, v in vars(self.s).items() if k != "user_agent"},
        }
        storage.write_text(os.path.join(self.output, contract.DOWNLOAD_SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
        if self.print_table:
            print(ledger.format_table(summary), flush=True)
        if self.fatal is not None:
            raise DownloadError(f"download stopped: {self.fatal}; what was settled is kept, rerun to resume") from self.fatal
        if interrupted:
            raise DownloadInterrupted(
                f"interrupted: {summary['total']} of {self.total} URLs settled and kept in {self.output}; rerun to resume")
        return summary

    def _load_prior(self) -> str | None:
        """A key-sorted ledger file of what the output folder and the store know (latest row per key),
        after sending the store the output's news; None when neither knows anything."""
        out_ledger = os.path.join(self.output, contract.LEDGER_FILE)
        out_ledger = out_ledger if os.path.exists(out_ledger) else None
        if self.store is None:
            return out_ledger
        store_ledger = self.store.prepare(self.workdir)
        if out_ledger is not None:
            self._sync_up(out_ledger, store_ledger)
        sources = [ledger.ledger_source(p, n) for n, p in enumerate((store_ledger, out_ledger)) if p is not None]
        if not sources:
            return None
        prior = os.path.join(self.workdir, "prior.parquet")
        ledger.fold(sources, prior, self.workdir)
        return prior

    def _sync_up(self, out_ledger: str, store_ledger: str | None) -> None:
        """Sends the store the rows (and images) a killed run settled in the output but had not yet sent."""
        stamp = lambda t: pc.binary_join_element_wise(t["key"], t["last_attempt"], "|")  # noqa: E731
        sources = [ledger.ledger_source(out_ledger)] + ([ledger.ledger_source(store_ledger)] if store_ledger else [])
        for parts in merge.merge(sources):
            out, known = parts[0], parts[1] if len(parts) > 1 else None
            if out is None or not out.num_rows:
                continue
            news = out.filter(pc.invert(pc.is_in(stamp(out), value_set=stamp(known).combine_chunks()))) \
                if known is not None and known.num_rows else out
            news = news.select(list(contract.COLUMNS))
            for batch in news.to_batches(max_chunksize=FLUSH_ROWS):
                rows = []
                for row in batch.to_pylist():
                    if row["status"] == contract.OK:
                        path = os.path.join(self.output, contract.IMAGES_DIR, f"{row['key']}.{row['format']}")
                        if not os.path.exists(path) or os.path.getsize(path) != row["bytes"]:
                            continue
                        self.store.put_image(path, row["key"], row["format"])
                    rows.append(row)
                if rows:
                    self.store.append(rows)

    def _orphan(self, key: str) -> str | None:
        """The format of an image with no ledger row (written by a run killed before it journalled it), or None."""
        if self.maybe_orphans:
            for fmt in contract.FORMATS:
                if os.path.exists(os.path.join(self.output, contract.IMAGES_DIR, f"{key}.{fmt}")):
                    return fmt
        return None

    def _adopt(self, task: _Task) -> dict | None:
        """The ledger row of an orphan image that decodes, or None (then it is fetched again, over it)."""
        path = os.path.join(self.output, contract.IMAGES_DIR, f"{task.key}.{task.adopt}")
        try:
            with open(path, "rb") as f:
                body = f.read()
            fmt, width, height = inspect_image(body, self.s.max_pixels)
            when = datetime.fromtimestamp(os.stat(path).st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        except (OSError, ImageProblem):
            return None
        if fmt != task.adopt or len(body) > self.s.max_bytes:
            return None
        if self.store is not None:
            self.store.put_image(path, task.key, fmt)
        self._count("adopted")
        return {"key": task.key, "url": task.url, "status": "ok", "error_class": contract.OK, "http_status": None,
                "attempts": 1, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "format": fmt,
                "width": width, "height": height, "first_attempt": when, "last_attempt": when,
                "message": "kept the image a stopped run had written before its ledger row"}

    # --- threads ---
    def _pump(self) -> None:
        bar = _progress_bar(self.total, self.progress)
        feeder = threading.Thread(target=self._feed, name="download-feeder", daemon=True)
        workers = [threading.Thread(target=self._work, name=f"download-{i}", daemon=True) for i in range(self.s.workers)]
        closer = threading.Thread(target=self._close_when_done, args=(feeder, workers), name="download-closer", daemon=True)
        for t in [feeder, *workers, closer]:
            t.start()
        try:
            self._collect(bar)
        except Exception as e:
            # The journal could not be written (a full disk): the workers stop too, rather than fetch on
            # with nobody to journal what they settle. (execute() handles an interrupt.)
            self.sched.stop()
            self.fetcher.abort()
            if isinstance(e, OSError):
                raise DownloadError(
                    f"download stopped: writing the ledger journal in {self.output} failed ({e}); the rows "
                    "journalled before are kept: free space (or fix the folder) and rerun to resume") from e
            raise
        finally:
            bar.set_postfix_str(self._postfix(), refresh=False)
            bar.close()

    def _collect(self, bar=None) -> None:
        """Journals the workers' rows as they come, until every thread is done.

        The main thread polls instead of being woken per row: one wake-up per row costs more
        CPU than the fetch itself once 32 workers share two cores.
        """
        pending: list[dict] = []
        last_flush = last_postfix = time.monotonic()
        try:
            while True:
                finished = self.finished.is_set()  # read first: all rows put before the end are drained below
                while True:
                    try:
                        item = self.results.popleft()
                    except IndexError:
                        break
                    if isinstance(item, Counter):  # rows carried over from earlier runs
                        self.counts.update(item)
                        if bar is not None:
                            bar.update(sum(item.values()))
                    else:
                        pending.append(item)
                        self.sched.done()
                        self.counts[item["error_class"]] += 1
                        if bar is not None:
                            bar.update(1)
                now = time.monotonic()
                if pending and (len(pending) >= FLUSH_ROWS or now - last_flush >= FLUSH_SECONDS or finished):
                    self._flush(pending)
                    pending, last_flush = [], now
                if bar is not None and now - last_postfix >= 0.5:
                    bar.set_postfix_str(self._postfix(), refresh=False)
                    last_postfix = now
                if finished:
                    return
                self.finished.wait(POLL_SECONDS)
        finally:
            if pending:
                self._flush(pending)

    def _flush(self, rows: list[dict]) -> None:
        self.journal.write(rows)
        self.journal.flush()
        if self.store is not None:
            self.store.append(rows)

    def _postfix(self) -> str:
        parts = [f"{cls}={n}" for cls, n in sorted(self.counts.items(), key=lambda kv: (kv[0] != contract.OK, -kv[1]))]
        if self.sched.retrying:
            parts.append(f"retrying={self.sched.retrying}")
        return " ".join(parts)

    def _close_when_done(self, feeder, workers) -> None:
        feeder.join()
        for w in workers:
            w.join()
        self.finished.set()

    def _count(self, what: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[what] += n

    def _fail(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        self.sched.stop()

    def _feed(self) -> None:
        try:
            self._feed_batches()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which reports it
            self._fail(e)
        finally:
            self.sched.close()

    def _feed_batches(self) -> None:
        """The manifest in key order, each key beside its earlier row (a merge join, so memory is bounded)."""
        sources = [merge.read_batches(self.manifest, columns=["key", "url"], batch_size=BATCH_ROWS)]
        if self.prior is not None:
            sources.append(merge.read_batches(self.prior, columns=list(contract.COLUMNS), batch_size=BATCH_ROWS))
        for parts in merge.merge(sources):
            wanted, known = parts[0], parts[1] if len(parts) > 1 else None
            if wanted is None or not wanted.num_rows:
                continue
            keys = wanted["key"].combine_chunks()
            if known is not None and known.num_rows:
                before = known.take(pc.index_in(keys, value_set=known["key"].combine_chunks())).to_pydict()
            else:
                before = {c: [None] * len(keys) for c in contract.COLUMNS}
            urls = wanted["url"].to_pylist()
            carried: Counter = Counter()
            for i, key in enumerate(keys.to_pylist()):
                task = self._plan(key, urls[i], {c: before[c][i] for c in contract.COLUMNS})
                if task is None:
                    carried[before["error_class"][i]] += 1
                elif not self.sched.submit(task):
                    return
            if carried:
                self._count("carried", sum(carried.values()))
                self.results.append(carried)

    def _plan(self, key: str, url: str, prior: dict) -> _Task | None:
        """None when the key is settled already; else the task that settles it."""
        status = prior["status"]
        if status is None:
            return _Task(key, url, adopt=self._orphan(key))
        task = _Task(key, url, attempts_before=prior["attempts"] or 0, first_attempt=prior["first_attempt"])
        if status == contract.OK:
            path = os.path.join(self.output, contract.IMAGES_DIR, f"{key}.{prior['format']}")
            try:
                if os.path.getsize(path) == prior["bytes"]:
                    return None
            except OSError:
                pass
            if self.store is not None:
                task.copy = prior
            return task
        if contract.is_transient(prior["error_class"], prior["http_status"]) or self.s.retry_permanent:
            return task
        return None

    def _work(self) -> None:
        while True:
            task = self.sched.get()
            if task is None:
                return
            try:
                row = self._settle(task)
            except BaseException as e:  # noqa: BLE001 - a full disk or a dead store stops the run, cleanly
                self._fail(e)
                self.sched.done()
                return
            if row is _DROPPED:
                self.sched.done()
            elif row is not None:
                # Still in flight until the main thread has taken it for the journal (it calls done()):
                # so rows that settle faster than they are journalled cannot pile up.
                self.results.append(row)

    def _settle(self, task: _Task) -> dict | None:
        """One attempt at a task: its ledger row when settled, None when it was put back for a retry."""
        if task.adopt is not None:
            row = self._adopt(task)
            if row is not None:
                return row
        if task.copy is not None:
            prior, task.copy = task.copy, None
            if self.store.get_image(task.key, prior["format"], prior["bytes"], self.output):
                self._count("copied")
                # The store's row, unchanged: the output now holds the very file it describes.
                return dict(prior)
        started = _now()
        outcome = self.fetcher.fetch(task.url)
        if self.sched.stopped and not outcome.ok:
            return _DROPPED  # most likely cut by the stop itself: not a failure of the URL
        task.tries += 1
        row = {
            "key": task.key, "url": task.url, "http_status": outcome.http_status,
            "attempts": task.attempts_before + task.tries, "first_attempt": task.first_attempt or started,
            "last_attempt": started,
        }
        task.first_attempt = row["first_attempt"]
        if outcome.ok:
            path = stores.write_image(self.output, task.key, outcome.fmt, outcome.body)
            if self.store is not None:
                self.store.put_image(path, task.key, outcome.fmt)
            self._count("fetched_ok")
            return {**row, "status": "ok", "error_class": contract.OK, "bytes": len(outcome.body),
                    "sha256": hashlib.sha256(outcome.body).hexdigest(), "format": outcome.fmt,
                    "width": outcome.width, "height": outcome.height, "message": ""}
        message = outcome.message
        if (outcome.transient or self.s.retry_permanent) and task.tries < self.s.max_attempts and not self.sched.stopped:
            if outcome.retry_after is None:
                delay = backoff_delay(task.tries, self.s.backoff, self.s.backoff_max)
            elif outcome.retry_after <= self.s.retry_after_max:
                delay = outcome.retry_after
            else:
                delay = None
                message += f"; Retry-After {outcome.retry_after:g} s is over the cap of {self.s.retry_after_max:g} s, left for the next run"
            if delay is not None:
                self._count("retries")
                self.sched.later(task, time.monotonic() + delay)
                return None
        self._count("fetched_failed")
        if task.tries > 1:
            message += f" (attempt {task.tries} of {self.s.max_attempts} in this run)"
        return {**row, "status": "failed", "error_class": outcome.error_class, "bytes": None, "sha256": None,
                "format": None, "width": None, "height": None, "message": message}


class _ProgressLines:
    """The progress bar's calls as progress lines (components.common.progress) for a pipeline's console."""

    def __init__(self, total: int):
        self.lines = progress_lines.Progress("download", total, "URLs")

    def update(self, n: int = 1) -> None:
        self.lines.update(n)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass  # the error classes are in the summary table at the end

    def close(self) -> None:
        self.lines.close()


def _progress_bar(total: int, enabled: bool | str):
    if enabled == PROGRESS_LINES:
        return _ProgressLines(total)
    from tqdm import tqdm

    # Off a terminal (a pipeline's log) a line every few seconds is enough.
    interval = 0.5 if sys.stderr.isatty() else 10.0
    return tqdm(total=total, unit="img", desc="download", file=sys.stderr, disable=not enabled,
                mininterval=interval, dynamic_ncols=True, smoothing=0.1)

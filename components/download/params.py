"""The download step's one declaration: what it reads and writes, and its parameters."""
from components.common.params import Artifact, Param, StepSpec

SPEC = StepSpec(
    name="download",
    description="Fetches every image of the manifest with retries and keeps a per-URL ledger; rerunning with the same "
                "output (or store) resumes: only never-tried URLs and transient failures are fetched.",
    inputs=(Artifact("manifest", "Folder written by ingest (manifest.parquet)."),),
    outputs=(Artifact("downloads", "Folder with images/, ledger.parquet and download_summary.json.", flag="--output"),),
    params=(
        Param("store", str, "", 'Local folder or gs:// prefix keeping images and ledger across runs ("" for none: each '
              "run fetches every URL).", pipeline="download_store"),
        Param("workers", int, 32, "Parallel downloads.", pipeline="download_workers"),
        Param("timeout", float, 10.0, "Seconds allowed to connect and for each read of a request; its total deadline "
              "is 3 x this.", pipeline="download_timeout"),
        Param("max_attempts", int, 3, "Attempts per URL and run for transient failures.",
              pipeline="download_max_attempts"),
        Param("max_bytes", int, 20 * 1024 * 1024, "Largest body accepted, in bytes.", pipeline="download_max_bytes"),
        Param("allow_private", bool, True, "Allow private and loopback addresses (True for the demo, False on a cluster "
              "that faces the internet).", pipeline="download_allow_private"),
        # The run stops at download when fewer than this share of the URLs gave an image (and always when none did):
        # the cause is then said where it is, not as an empty-column error steps later.
        Param("min_ok", float, 0.0, "Stop when fewer than this share of the URLs gave an image, naming the top error "
              "classes (always when none did).", pipeline="download_min_ok"),
        Param("deadline", float, 0.0, "Total seconds for one request, redirects included (0 = 3 x --timeout).",
              pipeline=None),
        Param("per_host", int, 16, "Connections at once to one host, whatever the worker count.", pipeline=None),
        Param("max_pixels", int, 50_000_000, "Largest width x height accepted (decompression bombs are refused before "
              "decoding).", pipeline=None),
        Param("max_redirects", int, 5, "Redirects followed per URL.", pipeline=None),
        Param("retry_permanent", bool, False, "Retry permanent failures too (404, other 4xx, not_image, ...), now and "
              "on later runs.", pipeline=None),
        Param("backoff", float, 1.0, "Base of the exponential backoff between retries, in seconds (full jitter: retry "
              "n waits uniform(0, min(backoff_max, backoff x 2^(n-1)))).", pipeline=None),
        Param("backoff_max", float, 30.0, "Longest backoff, in seconds.", pipeline=None),
        Param("retry_after_max", float, 60.0, "Longest Retry-After honoured in this run, in seconds; a longer one "
              "waits for the next run.", pipeline=None),
        Param("user_agent", str, "emotionet-au-pipeline/0.1 (research image download)", "User-Agent header of every "
              "request.", pipeline=None),
    ),
)
# A request's total deadline (redirects included) is this x timeout, when --deadline is 0.
DEADLINE_FACTOR = 3.0

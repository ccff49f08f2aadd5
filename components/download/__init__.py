"""The download step: fetches the manifest's images with retries, into images/ and a per-URL ledger that lets a rerun resume."""

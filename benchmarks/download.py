"""Benchmark of the download step: images/s and peak memory against a loopback server with a fixed latency, beside img2dataset.

    python benchmarks/download.py [--urls 2000] [--workers 32] [--latency 0.05] [--connect-latency 0,0.1]
                                  [--image-size 64x48] [--img2dataset-modes raw,validate]
                                  [--img2dataset-python PATH | --no-img2dataset] [--streaming-rows N]

A loopback server (asyncio, its own process) answers every request after `latency` seconds with
a JPEG of --image-size, keeping connections alive. With W workers no downloader can beat
W / latency images per second: the latency bound. Each --connect-latency value is one scenario:
0 is the plain per-request latency model (a new connection is free, as on loopback); 0.1 adds
100 ms before a new connection's first answer, what TCP and TLS round trips cost on a real host.
The download step runs as its CLI in a subprocess (peak RSS from wait4); img2dataset, when it
can be installed, runs on the same URL list with the same number of threads, in the same run,
one after the other, in each of --img2dataset-modes:
  raw       --disable_all_reencoding: stores the bytes it got, decodes nothing (so it would keep
            an HTML page or a truncated file; less work than the download step, which decodes);
  validate  --resize_mode no --skip_reencode: decodes every image (OpenCV) and keeps the original
            bytes, the same job as the download step's.
img2dataset lives in its own virtual environment (never the project's): --img2dataset-python, or
else one made under benchmarks/.cache/img2dataset/ on first use. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, "benchmarks", ".cache")
I2D_VENV = os.path.join(CACHE, "img2dataset")


# --- the loopback server (run as `download.py --serve PORT_FILE --latency S`) -------------------

def _jpeg(width: int = 64, height: int = 48) -> bytes:
    """A photo-like JPEG (gradients plus noise, quality 90): its size and decoding cost grow with the
    pixel count as a real photo's do (640x480: ~140 KB)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    a = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1).astype(np.float32)
    a += np.random.default_rng(0).normal(0, 18, a.shape)
    buf = io.BytesIO()
    Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def serve(port_file: str, latency: float, connect_latency: float, image_size: tuple[int, int] = (64, 48)) -> None:
    body = _jpeg(*image_size)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if connect_latency:
                # The round trips a real new connection costs (TCP, TLS) before its first request.
                await asyncio.sleep(connect_latency)
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                if not request:
                    break
                await asyncio.sleep(latency)
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        with open(port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(port_file + ".tmp", port_file)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def parse_size(text: str) -> tuple[int, int]:
    """--image-size WIDTHxHEIGHT as (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 8x8")
    return w, h


def start_server(workdir: str, latency: float, connect_latency: float = 0.0,
                 image_size: tuple[int, int] = (64, 48)) -> tuple[subprocess.Popen, int]:
    port_file = os.path.join(workdir, "port")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", port_file, "--latency", str(latency),
                             "--connect-latency", str(connect_latency), "--image-size", "x".join(map(str, image_size))])
    deadline = time.time() + 60
    while not os.path.exists(port_file):
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("the loopback server did not start")
        time.sleep(0.05)
    with open(port_file) as f:
        return proc, int(f.read())


# --- the runs ----------------------------------------------------------------------------------------

def run_child(cmd: list[str], env=None, timeout: float = 900) -> tuple[float, int, int, str, float]:
    """(wall seconds, peak RSS in MiB, exit code, output tail, CPU seconds) of one child process; the CPU
    seconds, user and system, include the children it waited for (img2dataset's shard worker)."""
    start = time.monotonic()
    out = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    wall = time.monotonic() - start
    out.seek(0)
    tail = out.read().decode(errors="replace")[-3000:]
    code = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss // 1024, code, tail, usage.ru_utime + usage.ru_stime


def bench_ours(urls: list[str], workdir: str, workers: int) -> dict:
    import pandas as pd

    from components.common.labels import image_key
    from components.common.ledger import DOWNLOAD_SUMMARY_FILE
    from components.common.manifest import MANIFEST_FILE

    mdir = os.path.join(workdir, "manifest")
    os.makedirs(mdir, exist_ok=True)
    pd.DataFrame({"key": [image_key(u) for u in urls], "url": urls, "row": range(2, len(urls) + 2)}).to_parquet(
        os.path.join(mdir, MANIFEST_FILE))
    out = os.path.join(workdir, "ours")
    # One host serves everything here, so the per-host limit is the worker count.
    cmd = [sys.executable, "-m", "components.download", "--manifest", mdir, "--output", out, "--workers", str(workers),
           "--per-host", str(workers), "--no-progress"]
    wall, rss, code, tail, cpu = run_child(cmd)
    if code != 0:
        return {"error": f"exit {code}: {tail[-500:]}"}
    with open(os.path.join(out, DOWNLOAD_SUMMARY_FILE)) as f:
        summary = json.load(f)
    return {"ok": summary["ok"], "seconds": summary["run"]["seconds"], "wall": wall, "rss": rss, "cpu": cpu}


def bench_streaming(rows: int, workdir: str, workers: int) -> list[tuple[str, dict]]:
    """A large manifest whose hosts are all under .invalid: every row settles at once as `dns`, with no
    network, so what is measured is the per-row cost and whether memory stays flat as rows grow.
    Run twice: the second run reads, joins and rewrites a ledger of `rows` rows (dns is transient,
    so it tries every row again)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.common.labels import image_key
    from components.common.ledger import DOWNLOAD_SUMMARY_FILE
    from components.common.manifest import MANIFEST_FILE

    mdir = os.path.join(workdir, "manifest")
    os.makedirs(mdir, exist_ok=True)
    writer = None
    for start in range(0, rows, 100_000):
        urls = [f"http://h{i % 997}.bench.invalid/{i}.jpg" for i in range(start, min(rows, start + 100_000))]
        t = pa.table({"key": [image_key(u) for u in urls], "url": urls})
        writer = writer or pq.ParquetWriter(os.path.join(mdir, MANIFEST_FILE), t.schema)
        writer.write_table(t)
    writer.close()
    out = os.path.join(workdir, "out")
    # One attempt each: the rows settle as fast as the step can plan, journal and compact them.
    cmd = [sys.executable, "-m", "components.download", "--manifest", mdir, "--output", out, "--workers", str(workers),
           "--max-attempts", "1", "--no-progress"]
    results = []
    for name in ("first run", "rerun on its ledger"):
        wall, rss, code, tail, cpu = run_child(cmd)
        # Every row fails by design, so the step settles them all and then says no image came (exit 2).
        if code != 0 and "images downloaded (none)" not in tail:
            results.append((name, {"error": f"exit {code}: {tail[-500:]}"}))
            break
        with open(os.path.join(out, DOWNLOAD_SUMMARY_FILE)) as f:
            summary = json.load(f)
        results.append((name, {"ok": summary["total"], "seconds": summary["run"]["seconds"], "wall": wall, "rss": rss,
                               "cpu": cpu}))
    return results


def find_img2dataset(python: str | None, install: bool) -> tuple[str | None, str]:
    """(python of a venv with img2dataset, or None; why not)."""
    if python:
        ok = subprocess.run([python, "-c", "import img2dataset"], capture_output=True, timeout=300).returncode == 0
        return (python, "") if ok else (None, f"{python} cannot import img2dataset")
    venv_python = os.path.join(I2D_VENV, "bin", "python")
    if os.path.exists(venv_python):
        return find_img2dataset(venv_python, False)
    if not install:
        return None, "not installed (pass --img2dataset-python, or drop --no-img2dataset to install it)"
    print(f"installing img2dataset into {I2D_VENV} (once) ...", file=sys.stderr, flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", I2D_VENV], check=True, capture_output=True, timeout=300)
        r = subprocess.run([venv_python, "-m", "pip", "install", "--quiet", "img2dataset"], capture_output=True,
                           text=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as e:
        shutil.rmtree(I2D_VENV, ignore_errors=True)
        return None, f"could not be installed: {e}"
    if r.returncode != 0:
        shutil.rmtree(I2D_VENV, ignore_errors=True)
        return None, f"could not be installed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    return find_img2dataset(venv_python, False)


I2D_MODES = {
    # Keeps the bytes it got without decoding them.
    "raw": ["--resize_mode", "no", "--disable_all_reencoding", "True"],
    # Decodes every image (cv2.imdecode) and keeps the original bytes when the format is already jpg.
    "validate": ["--resize_mode", "no", "--skip_reencode", "True", "--encode_format", "jpg"],
}


def bench_img2dataset(python: str, urls: list[str], workdir: str, workers: int, mode: str = "raw") -> dict:
    os.makedirs(workdir, exist_ok=True)
    url_file = os.path.join(workdir, "urls.txt")
    with open(url_file, "w") as f:
        f.write("\n".join(urls) + "\n")
    out = os.path.join(workdir, "img2dataset")
    cmd = [
        python, "-m", "img2dataset.main", "--url_list", url_file, "--input_format", "txt", "--output_folder", out,
        "--output_format", "files", "--processes_count", "1", "--thread_count", str(workers),
        *I2D_MODES[mode], "--retries", "0", "--timeout", "10",
        "--enable_wandb", "False", "--number_sample_per_shard", str(len(urls) + 1), "--distributor", "multiprocessing",
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.pop("PYTHONPATH", None)
    wall, rss, code, tail, cpu = run_child(cmd, env=env)
    stats = []
    for path in glob.glob(os.path.join(out, "*_stats.json")):
        with open(path) as f:
            stats.append(json.load(f))
    if code != 0 or not stats:
        return {"error": f"exit {code}: {tail[-500:]}"}
    seconds = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
    # Its parent and its shard worker are two processes: ru_maxrss is the larger of them.
    return {"ok": sum(s["successes"] for s in stats), "seconds": seconds, "wall": wall, "rss": rss, "cpu": cpu}


def _seconds_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds, comma-separated, e.g. 0,0.1") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or more seconds >= 0")
    return values


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in I2D_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"{text!r}: expected some of {', '.join(I2D_MODES)}, comma-separated")
    return modes


def print_scenario(urls: int, workers: int, latency: float, connect: float, image: tuple[int, int], body: int,
                   rows: list[tuple[str, dict]]) -> None:
    """One scenario's table; rows[0] is the download step's, which the other rows are compared with."""
    bound = workers / latency
    setup = f" + {connect * 1000:g} ms per new connection" if connect else " (a new connection costs nothing)"
    print(f"\n{urls} URLs of {image[0]}x{image[1]} JPEG ({body / 1024:.0f} KiB), {workers} workers, {latency * 1000:g} ms per "
          f"request{setup}, {os.cpu_count()} CPU cores; latency bound = workers / latency = {bound:.0f} images/s")
    print(f"{'downloader':<32} {'ok':>6} {'seconds':>8} {'images/s':>9} {'of bound':>9} {'wall s':>7} {'CPU s':>6} "
          f"{'peak RSS MiB':>13} {'ours is':>8}")
    ours = None
    for i, (name, r) in enumerate(rows):
        if "error" in r:
            print(f"{name:<32} {r['error']}")
            continue
        rate = r["ok"] / r["seconds"] if r["seconds"] > 0 else 0.0
        if i == 0:
            ours = rate
        ratio = f"{ours / rate:.2f}x" if i and ours is not None and rate else ""
        print(f"{name:<32} {r['ok']:>6} {r['seconds']:>8.2f} {rate:>9.1f} {rate / bound:>8.0%} {r['wall']:>7.1f} "
              f"{r['cpu']:>6.2f} {r['rss']:>13} {ratio:>8}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--urls", type=int, default=2000, help="URLs in the list.")
    p.add_argument("--workers", type=int, default=32, help="Workers (and img2dataset threads).")
    p.add_argument("--latency", type=float, default=0.05, help="Seconds the server waits before each answer.")
    p.add_argument("--connect-latency", type=_seconds_list, default=[0.0, 0.1],
                   help="Extra seconds before the first answer on each new connection (a real connection's "
                   "TCP and TLS round trips; loopback has none), comma-separated: one scenario each. "
                   "0 = the plain per-request latency model. Default: 0,0.1.")
    p.add_argument("--image-size", type=parse_size, default=(64, 48),
                   help="WIDTHxHEIGHT of the JPEG served (photo-like). Default 64x48.")
    p.add_argument("--img2dataset-modes", type=_modes, default=list(I2D_MODES),
                   help=f"img2dataset configurations to run, comma-separated, of: {', '.join(I2D_MODES)} (see above).")
    p.add_argument("--img2dataset-python", default=None, help="Python of a virtual environment with img2dataset.")
    p.add_argument("--no-img2dataset", action="store_true", help="Skip img2dataset (and do not install it).")
    p.add_argument("--streaming-rows", type=int, default=0,
                   help="Also settle a manifest of this many rows on .invalid hosts (no network): peak memory "
                   "against manifest size. 0 = skip.")
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.latency, args.connect_latency[0], args.image_size)
        return 0
    sys.path.insert(0, REPO)

    python, why = None, "skipped (--no-img2dataset)"
    if not args.no_img2dataset:
        python, why = find_img2dataset(args.img2dataset_python, install=True)
    i2d_version = ""
    if python is not None:
        i2d_version = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('img2dataset'))"],
                                     capture_output=True, text=True, timeout=120).stdout.strip()
    body = len(_jpeg(*args.image_size))
    for connect in args.connect_latency:
        rows = []
        with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
            server, port = start_server(tmp, args.latency, connect, args.image_size)
            try:
                # Distinct paths, so nothing can be served from a cache.
                urls = [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(args.urls)]
                rows.append(("download step (this repo)", bench_ours(urls, os.path.join(tmp, "a"), args.workers)))
                for mode in args.img2dataset_modes:
                    name = f"img2dataset {i2d_version} ({mode})"
                    if python is None:
                        rows.append((name, {"error": why}))
                    else:
                        rows.append((name, bench_img2dataset(python, urls, os.path.join(tmp, f"b-{mode}"), args.workers,
                                                             mode)))
            finally:
                server.kill()
                server.wait()
        print_scenario(args.urls, args.workers, args.latency, connect, args.image_size, body, rows)
    print("ours is: the download step's images/s over that row's.")
    if args.streaming_rows:
        with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
            results = bench_streaming(args.streaming_rows, tmp, args.workers)
        print(f"\nstreaming: {args.streaming_rows} manifest rows, all on .invalid hosts (settled as dns at the first attempt, no network)")
        print(f"{'run':<20} {'rows settled':>13} {'seconds':>8} {'rows/s':>9} {'wall s':>7} {'CPU s':>6} {'peak RSS MiB':>13}")
        for name, r in results:
            if "error" in r:
                print(f"{name:<20} {r['error']}")
            else:
                print(f"{name:<20} {r['ok']:>13} {r['seconds']:>8.2f} {r['ok'] / r['seconds']:>9.0f} {r['wall']:>7.1f} "
                      f"{r['cpu']:>6.2f} {r['rss']:>13}")
    print("seconds: from the first request to the last result, without interpreter start-up "
          "(ours: download_summary.json run.seconds; img2dataset: its shard stats); wall s and CPU s (user + system): "
          "the whole process, start-up included.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the model server: throughput and latency under wrk at 1, 8 and 32 clients against the in-process
Scorer, a push during load, and a soak with bad requests mixed in. Prints a table; exits 1 when a check fails.

    apt-get install -y wrk                                   # the load generator (Debian's package)
    python benchmarks/serve.py                               # 20 s per level, push, 10-minute soak (~13 minutes)
    python benchmarks/serve.py --duration 5 --push-seconds 15 --soak-seconds 30     # a quick look (~2 minutes)
    python benchmarks/serve.py --model runs/registry/au-detector                    # the `make run` model

The images are 640x480 JPEGs with one face (matplotlib's photo of Grace Hopper pasted on plain grounds, at places
and sizes drawn from a seed). Each request is Vertex AI's POST /predict with one image: wrk's -c N connections are N
clients, each sending its next request when its answer came. The model is served from a scratch registry under
benchmarks/.cache/serve/ (the given model pushed there, never to your registry): tiny_model's face-crop model
(tests/data/evaluate) unless --model names another. The baseline is components.common.inference.Scorer.score in this
process on the same images, --max-batch at a time, while the server is idle: the share is server images/s over it.

Checks: every answer of the load levels is 200; a push during load at 8 clients (a second version pushed after a
third of --push-seconds) loses no request and the server then answers with the new version; the soak at 8 clients
(1 request in 10 bad: broken JSON, bad base64, not an image, a decompression bomb, a wrong Content-Type) gets no
5xx but 503s of a full queue, no socket error, and the server's RSS grows less than 10% from its start (measured
after the load levels and the push) to its end.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "benchmarks", ".cache", "serve")
READY_S = 300
RSS_GROWTH_LIMIT = 0.10
MARKER = "WRK_JSON "

# wrk's Lua: requests read from a manifest (route, Content-Type, body file), sent round-robin; each thread counts the
# statuses and the X-Model-Version of its answers; done() prints them with the latency percentiles as one JSON line.
LUA = r"""
local manifest = "__MANIFEST__"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  requests, statuses, versions, n = {}, {}, {}, 0
  for line in io.lines(manifest) do
    local path, ctype, file = line:match("^(%S+)\t(%S+)\t(.+)$")
    local f = assert(io.open(file, "rb"))
    local body = f:read("*a")
    f:close()
    table.insert(requests, wrk.format("POST", path, {["Content-Type"] = ctype}, body))
  end
end
function request()
  n = n % #requests + 1
  return requests[n]
end
function response(status, headers, body)
  local s = tostring(status)
  statuses[s] = (statuses[s] or 0) + 1
  local v = headers["x-model-version"] or headers["X-Model-Version"] or "-"
  versions[v] = (versions[v] or 0) + 1
end
local function object(t)
  local parts = {}
  for k, v in pairs(t) do table.insert(parts, string.format("%q:%d", k, v)) end
  return "{" .. table.concat(parts, ",") .. "}"
end
function done(summary, latency, requests)
  local st, vs = {}, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do st[k] = (st[k] or 0) + v end
    for k, v in pairs(t:get("versions")) do vs[k] = (vs[k] or 0) + v end
  end
  local e = summary.errors
  io.write(string.format(
    '__MARKER__{"requests":%d,"seconds":%.3f,"p50_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f,"statuses":%s,' ..
    '"versions":%s,"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, object(st), object(vs), e.connect, e.read, e.write, e.timeout))
end
"""


# --- the images and the model ---------------------------------------------------------------------------------------
def scenes(count: int, seed: int) -> list[bytes]:
    """count 640x480 JPEGs (q90), each one face on a plain ground, placed and sized from the seed."""
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = Image.open(io.BytesIO(f.read())).convert("RGB")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        w = int(rng.integers(150, 300))
        h = int(w * photo.size[1] / photo.size[0])
        canvas = Image.new("RGB", (640, 480), tuple(int(c) for c in rng.integers(0, 256, 3)))
        canvas.paste(photo.resize((w, h)), (int(rng.integers(0, 640 - w)), int(rng.integers(0, 480 - h))))
        buf = io.BytesIO()
        canvas.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _evaluation_for(model_dir: str, work: str) -> str:
    """The folder push reads the blessing from: a registry version carries its own; else a made-up blessed one."""
    if os.path.exists(os.path.join(model_dir, "blessing.json")):
        return model_dir
    sys.path.insert(0, os.path.join(ROOT, "tests", "data", "evaluate"))
    import tiny_model

    return tiny_model.make_evaluation(os.path.join(work, "evaluation"), True)


def scratch_registry(model: str | None, work: str) -> tuple[str, str, str]:
    """(registry model root, model folder, evaluation folder): the model pushed into a scratch registry in work."""
    from components.common import registry

    if model:
        model_dir, _ = registry.resolve_model(model)
    else:
        sys.path.insert(0, os.path.join(ROOT, "tests", "data", "evaluate"))
        import tiny_model

        from components.common.faces import FaceSettings

        model_dir = os.path.join(CACHE, "tiny-model")
        if not os.path.exists(os.path.join(model_dir, "model_config.json")):
            tiny_model.make_model(model_dir, tiny_model.GOOD, faces=FaceSettings().to_dict())
    evaluation = _evaluation_for(model_dir, work)
    destination = os.path.join(work, "registry")
    push(model_dir, evaluation, destination, "bench-1")
    return os.path.join(destination, "au"), model_dir, evaluation


def push(model_dir: str, evaluation: str, destination: str, version: str) -> dict:
    from components.push import logic as push_logic

    record = push_logic.run(model_dir, evaluation, None, destination=destination, model_name="au", force=True,
                            infra_validate=False, version=version)
    if not record["pushed"]:
        sys.exit(f"the benchmark could not push {model_dir}: {record.get('message')}")
    return record


# --- the baseline -------------------------------------------------------------------------------------------------
def in_process(scorer, images: list[bytes], batch: int, seconds: float) -> dict:
    """Images/s of Scorer.score in this process, `batch` images a call, for about `seconds`, and one image a call."""
    names = [f"img{i}" for i in range(len(images))]
    rates = {}
    for size in (batch, 1):
        done, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds / 2 or done == 0:
            # The next `size` images of the cycle: every image as often as the server gets it.
            picks = [(done + i) % len(images) for i in range(size)]
            results = scorer.score([images[i] for i in picks], [names[i] for i in picks])
            done += len(results)
        rates[size] = done / (time.perf_counter() - start)
        if size == batch:
            rates["cpu_ms"] = (time.process_time() - cpu) / done * 1000
        faces = sum(len(r["faces"]) for r in results)
        if faces == 0:
            sys.exit("the in-process scorer found no face in the benchmark's images: check the model's face settings")
    return {"batched": rates[batch], "single": rates[1], "cpu_ms": rates["cpu_ms"]}


# --- the server and wrk -------------------------------------------------------------------------------------------
class Server:
    def __init__(self, model_root: str, work: str, flags: list[str]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(work, "server.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIP_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "components.serve", "--model", model_root, "--port", str(self.port), *flags],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def get(self, path: str) -> tuple[int, dict]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def wait_ready(self) -> float:
        start = time.monotonic()
        while time.monotonic() - start < READY_S:
            if self.proc.poll() is not None:
                sys.exit(f"the server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if self.get("/health")[0] == 200:
                    return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.25)
        sys.exit(f"the server was not ready after {READY_S} s:\n{self.log_tail()}")

    def counters(self) -> dict[str, float]:
        """The server's /metrics, {name: value} (labels dropped)."""
        import urllib.request

        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        return {line.split("{")[0].split()[0]: float(line.split()[-1]) for line in text.splitlines()
                if line and not line.startswith("#")}

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used (all its threads)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def log_tail(self, n: int = 3000) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-n:]

    def stop(self) -> None:
        from components.common import processes

        processes.stop(self.proc, 30)


def write_requests(work: str, name: str, requests: list[tuple[str, str, bytes]]) -> str:
    """A wrk script sending these (route, Content-Type, body) round-robin; returns its path."""
    folder = os.path.join(work, name)
    os.makedirs(folder, exist_ok=True)
    manifest = os.path.join(folder, "manifest.tsv")
    with open(manifest, "w") as m:
        for i, (route, ctype, body) in enumerate(requests):
            path = os.path.join(folder, f"body-{i:03d}")
            with open(path, "wb") as f:
                f.write(body)
            m.write(f"{route}\t{ctype}\t{path}\n")
    script = os.path.join(folder, "requests.lua")
    with open(script, "w") as f:
        f.write(LUA.replace("__MANIFEST__", manifest).replace("__MARKER__", MARKER))
    return script


def parse_wrk(output: str) -> dict:
    """The JSON line the script's done() printed."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            result = json.loads(line[len(MARKER):])
            result["rps"] = result["requests"] / result["seconds"] if result["seconds"] else 0.0
            result["socket_errors"] = sum(result["errors"].values())
            return result
    raise ValueError(f"wrk printed no result line:\n{output[-2000:]}")


def wrk(url: str, script: str, clients: int, seconds: float) -> dict:
    cmd = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "30s", "-s", script, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-1000:]}")
    return parse_wrk(done.stdout)


def predict_body(image: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()


def _png_bomb() -> bytes:
    """A PNG header that announces 50,000 x 50,000 pixels: what a decompression bomb looks like to the server."""
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


BAD_REQUESTS = [  # (what, route, Content-Type, body, the status it must get)
    ("broken JSON", "/predict", "application/json", b'{"instances": [', 400),
    ("bad base64", "/predict", "application/json", b'{"instances": [{"b64": "*not base64*"}]}', 400),
    ("not an image", "/predict", "application/json", predict_body(b"hello, not an image"), 400),
    ("decompression bomb", "/predict", "application/json", predict_body(_png_bomb()), 413),
    ("wrong Content-Type", "/v1/faces", "text/plain", b"hello", 415),
]


def soak_requests(images: list[bytes]) -> list[tuple[str, str, bytes]]:
    """Nine good requests, then one bad, five times over (each bad kind once): 10% bad."""
    out = []
    for i, (_, route, ctype, body, _) in enumerate(BAD_REQUESTS):
        out += [("/predict", "application/json", predict_body(images[(i * 9 + j) % len(images)])) for j in range(9)]
        out.append((route, ctype, body))
    return out


# --- the checks and the table ---------------------------------------------------------------------------------------
def check_load(result: dict, allowed: tuple[str, ...] = ("200",)) -> list[str]:
    problems = [f"{n} answers with status {s}" for s, n in sorted(result["statuses"].items()) if s not in allowed]
    if result["socket_errors"]:
        problems.append(f"socket errors {result['errors']}")
    return problems


def check_soak(result: dict, rss_start: float, rss_end: float) -> list[str]:
    problems = check_load(result, allowed=tuple(str(s) for s in {200, 503} | {b[4] for b in BAD_REQUESTS}))
    growth = rss_end / rss_start - 1
    if growth >= RSS_GROWTH_LIMIT:
        problems.append(f"RSS grew {growth:.1%} ({rss_start:.0f} -> {rss_end:.0f} MB), over {RSS_GROWTH_LIMIT:.0%}")
    return problems


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "| " + " | ".join(("-" * w) if i == 0 else ("-" * (w - 1) + ":") for i, w in enumerate(widths)) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                       for i, (c, w) in enumerate(zip(r, widths))) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="A registry model root, version or model folder (default: tiny_model's face-crop "
                                   "model, made once under benchmarks/.cache/serve/).")
    p.add_argument("--clients", default="1,8,32", help="Concurrency levels (default: %(default)s).")
    p.add_argument("--duration", type=float, default=20.0, help="Seconds per level (default: %(default)s).")
    p.add_argument("--push-seconds", type=float, default=30.0, help="Seconds of load around the push (default: "
                                                                    "%(default)s; 0 skips it).")
    p.add_argument("--soak-seconds", type=float, default=600.0, help="Seconds of soak (default: %(default)s; 0 skips "
                                                                     "it).")
    p.add_argument("--images", type=int, default=16, help="Distinct 640x480 face photos (default: %(default)s).")
    p.add_argument("--max-batch", type=int, default=32, help="The server's --max-batch and the baseline's batch.")
    p.add_argument("--batch-window-ms", type=float, default=0.0, help="The server's --batch-window-ms.")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("benchmarks/serve.py needs wrk, the HTTP load generator: apt-get install -y wrk", file=sys.stderr)
        return 2
    sys.path.insert(0, ROOT)
    from components.common.inference import quiet_libraries

    quiet_libraries()
    os.makedirs(CACHE, exist_ok=True)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-", dir=CACHE) as work:
        images = scenes(args.images, seed=0)
        model_root, model_dir, evaluation = scratch_registry(args.model, work)
        load_start = os.getloadavg()[0]
        print(f"{len(images)} photos of 640x480 with one face; model {args.model or 'tiny_model (face crops)'}; "
              f"{os.cpu_count()} cores; load average {load_start:.1f}", flush=True)
        from components.common import inference

        scorer = inference.Scorer(model_root, batch_size=args.max_batch)
        scorer.warmup()
        before = in_process(scorer, images, args.max_batch, max(4.0, args.duration))
        print(f"in-process Scorer.score: {before['batched']:.1f} images/s at {args.max_batch} a call, "
              f"{before['single']:.1f} at 1", flush=True)
        base = before
        server = Server(model_root, work, ["--poll-s", "1", "--max-batch", str(args.max_batch),
                                           "--batch-window-ms", str(args.batch_window_ms)])
        try:
            ready_s = server.wait_ready()
            print(f"server ready in {ready_s:.1f} s", flush=True)
            good = write_requests(work, "good", [("/predict", "application/json", predict_body(i)) for i in images])
            wrk(server.url, good, 8, 3)  # warm: the first batches of each size trace nothing, but the caches fill
            rows = []
            for clients in [int(c) for c in args.clients.split(",")]:
                c0, cpu0 = server.counters(), server.cpu_seconds()
                r = wrk(server.url, good, clients, args.duration)
                c1, cpu1 = server.counters(), server.cpu_seconds()
                batches = c1["serve_batches_total"] - c0["serve_batches_total"]
                scored = c1["serve_images_scored_total"] - c0["serve_images_scored_total"]
                mean_batch = scored / batches if batches else 0.0
                problems += [f"{clients} clients: {x}" for x in check_load(r)]
                rows.append([f"{clients} client{'s' if clients > 1 else ''}", f"{r['requests']:,}",
                             f"{r['rps']:.1f}", f"{r['rps'] / base['batched']:.0%}",
                             f"{(cpu1 - cpu0) / max(1, r['requests']) * 1000:.1f}", f"{r['p50_ms']:.0f}",
                             f"{r['p99_ms']:.0f}", f"{mean_batch:.1f}",
                             str(r["requests"] - r["statuses"].get("200", 0))])
                print(f"  {clients:>3} clients: {r['rps']:.1f} req/s, p50 {r['p50_ms']:.0f} ms, p99 "
                      f"{r['p99_ms']:.0f} ms", flush=True)
            push_row = None
            if args.push_seconds > 0:
                push_row = push_during_load(server, good, model_dir, evaluation, work, args.push_seconds, problems)
            soak_row = None
            if args.soak_seconds > 0:
                soak_row = soak(server, write_requests(work, "soak", soak_requests(images)), args.soak_seconds,
                                problems)
        finally:
            server.stop()
        # Again, now that the server is gone: the machine's other load drifts, and the share uses the mean of both.
        after = in_process(scorer, images, args.max_batch, max(4.0, args.duration))
        base = {k: (before[k] + after[k]) / 2 for k in before}
        for row in rows:
            row[3] = f"{float(row[2]) / base['batched']:.0%}"
    print(f"\nServer (POST /predict, one 640x480 face photo per request, wrk -t1 -cN, {args.duration:g} s per level, "
          f"--max-batch {args.max_batch}, --batch-window-ms {args.batch_window_ms:g}) against Scorer.score in one "
          f"process ({base['batched']:.1f} images/s at {args.max_batch} a call, {before['batched']:.1f} before the "
          f"server ran and {after['batched']:.1f} after; {base['single']:.1f} at 1):\n")
    print(table(rows, ["load", "requests", "req/s", "share of in-process", "server CPU ms/request", "p50 ms",
                       "p99 ms", "mean batch", "non-200"]))
    print(f"\nIn-process CPU per image: {base['cpu_ms']:.1f} ms. Load average of the machine: {load_start:.1f} at "
          f"the start, {os.getloadavg()[0]:.1f} at the end (other work shares the cores: req/s follows the CPU share "
          "the processes get; CPU ms per request does not).")
    if push_row:
        print("\n" + push_row)
    if soak_row:
        print("\n" + soak_row)
    if problems:
        print("\nFAILED:\n" + "\n".join(f"- {x}" for x in problems))
        return 1
    print("\nall checks passed")
    return 0


def push_during_load(server: Server, script: str, model_dir: str, evaluation: str, work: str, seconds: float,
                     problems: list[str]) -> str:
    """8 clients for `seconds`; a new version pushed after a third of it. Every answer must be 200."""
    result: dict = {}

    def load():
        result.update(wrk(server.url, script, 8, seconds))

    t = threading.Thread(target=load)
    t.start()
    time.sleep(seconds / 3)
    record = push(model_dir, evaluation, os.path.join(work, "registry"), "bench-2")
    pushed_at = time.monotonic()
    swapped_after = None
    while t.is_alive():
        if swapped_after is None and server.get("/health")[1].get("version") == record["version"]:
            swapped_after = time.monotonic() - pushed_at
        time.sleep(0.2)
    t.join()
    if swapped_after is None and server.get("/health")[1].get("version") == record["version"]:
        swapped_after = time.monotonic() - pushed_at
    problems += [f"push during load: {x}" for x in check_load(result)]
    versions = result["versions"]
    if swapped_after is None or not versions.get(record["version"]):
        problems.append(f"push during load: the server never answered with version {record['version']} "
                        f"(answers per version: {versions})")
    lost = result["requests"] - result["statuses"].get("200", 0)
    swap = (f"{swapped_after:.1f} s after the push (loaded and warmed beside the old one)"
            if swapped_after is not None else "never")
    return (f"Push during load (8 clients, {seconds:g} s, version bench-2 pushed after {seconds / 3:.0f} s): "
            f"{result['requests']:,} requests, {lost} not answered 200, {result['socket_errors']} socket errors; "
            f"answers per version {json.dumps(versions)}; the server answered with the new version {swap}; "
            f"p99 {result['p99_ms']:.0f} ms.")


def soak(server: Server, script: str, seconds: float, problems: list[str]) -> str:
    """8 clients for `seconds`, 10% bad requests; RSS sampled every 5 s."""
    rss_start = server.rss_mb()
    samples = [rss_start]
    result: dict = {}

    def load():
        result.update(wrk(server.url, script, 8, seconds))

    t = threading.Thread(target=load)
    t.start()
    while t.is_alive():
        t.join(timeout=5)
        samples.append(server.rss_mb())
    rss_end = server.rss_mb()
    problems += [f"soak: {x}" for x in check_soak(result, rss_start, rss_end)]
    statuses = ", ".join(f"{s}: {n:,}" for s, n in sorted(result["statuses"].items()))
    return (f"Soak (8 clients, {seconds:g} s, 1 request in 10 bad): {result['requests']:,} requests at "
            f"{result['rps']:.1f}/s; statuses {statuses}; {result['socket_errors']} socket errors; p50 "
            f"{result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms; server RSS {rss_start:.0f} MB at the start, "
            f"{rss_end:.0f} MB at the end ({rss_end / rss_start - 1:+.1%}), {max(samples):.0f} MB at most.")


if __name__ == "__main__":
    sys.exit(main())

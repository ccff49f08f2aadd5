"""Benchmark of a sweep: one run of the whole DAG beside a 2x2 sweep on the same demo world, and whether the sweep costs
no more than its data steps once plus its trainings and evaluations (and a stated allowance). Prints a table.

    python benchmarks/sweep.py                                  # 300 demo scenes, 2 epochs, batch_size x learning_rate
    python benchmarks/sweep.py --demo-size 2000 --epochs 16     # the make-run world

Both commands are the user's own (`pipeline.py run`, `pipeline.py sweep`), run one after the other as
subprocesses, with the blessing thresholds at 0 (a short training is judged on the plumbing). The
demo set is drawn before either is timed. Times are wall-clock seconds: each step's from the
run's own records (run_summary.json, sweep.json), each command's around its process. The
allowance: the one run's own time outside its steps (start-up, demo server, summary, report)
plus ALLOWANCE_PER_POINT_S per grid point (a kfp.local part's set-up, the importer, the point's
summary and report, the comparison and the push).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_STEPS = ("ingest", "download", "validate", "convert", "filter-examples")
ALLOWANCE_PER_POINT_S = 5.0


def _cli(args: list[str]) -> float:
    """Runs `python pipeline.py ARGS` and returns its wall-clock seconds; exits with its output when it fails."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "pipeline.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"pipeline.py {args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def measure(runs_dir: str, demo_size: int, epochs: int, grid: list[str]) -> dict:
    """Times one run and one sweep on the same demo set; the figures the table shows."""
    sys.path.insert(0, ROOT)
    from pipeline import defaults, demo

    demo.generate_demo(os.path.join(runs_dir, "demo", f"size{demo_size}-seed{defaults.DEMO_SEED}-wild"), demo_size,
                       defaults.DEMO_SEED, scene="wild")
    common = ["--runs-dir", runs_dir, "--preset", defaults.DEMO_PRESET, "--demo-size", str(demo_size),
              "--epochs", str(epochs), "--min-macro-f1", "0", "--min-macro-auc", "0"]
    one_dir, sweep_dir = os.path.join(runs_dir, "one"), os.path.join(runs_dir, "sweep")
    one_wall = _cli(["run", "--run-dir", one_dir, *common])
    sweep_wall = _cli(["sweep", "--run-dir", sweep_dir, *common, *[a for g in grid for a in ("--grid", g)]])
    with open(os.path.join(one_dir, "run_summary.json")) as f:
        one = {s["name"]: s["seconds"] for s in json.load(f)["steps"]}
    with open(os.path.join(sweep_dir, "sweep.json")) as f:
        sweep = json.load(f)
    points = sweep["points"]
    return {
        "demo_size": demo_size, "epochs": epochs, "grid": sweep["grid"], "points": len(points),
        "one_wall": one_wall,
        "one_data": sum(one[s] for s in DATA_STEPS),
        "one_model": one["train"] + one["evaluate"],
        "one_steps": sum(one.values()),
        "sweep_wall": sweep_wall,
        "sweep_data": sweep["data"]["seconds"],
        "sweep_trainings": sum(p["seconds"].get("train", 0) for p in points),
        "sweep_evaluations": sum(p["seconds"].get("evaluate", 0) for p in points),
        "best": sweep["best"],
        "pushed": [p["name"] for p in sweep["pushed"] if p["pushed"]],
    }


def table(m: dict) -> str:
    """The benchmark's table (markdown, as README shows it) from measure()'s figures."""
    work = m["sweep_data"] + m["sweep_trainings"] + m["sweep_evaluations"]
    allowance = (m["one_wall"] - m["one_steps"]) + ALLOWANCE_PER_POINT_S * m["points"]
    separate = m["points"] * m["one_data"] + m["sweep_trainings"] + m["sweep_evaluations"]
    grid = " x ".join(f"{k} {','.join(str(v) for v in vs)}" for k, vs in m["grid"].items())
    rows = [
        ("one run, whole DAG (wall)", m["one_wall"]),
        ("… its data steps (ingest, download, validate, convert, filter)", m["one_data"]),
        ("… its train + evaluate", m["one_model"]),
        (f"sweep of {m['points']} points: {grid} (wall)", m["sweep_wall"]),
        ("… its data steps, once", m["sweep_data"]),
        (f"… its {m['points']} trainings", m["sweep_trainings"]),
        (f"… its {m['points']} evaluations", m["sweep_evaluations"]),
        ("… data once + trainings + evaluations", work),
        ("… the rest (start-up, demo server, per-point set-up, reports, comparison, push)", m["sweep_wall"] - work),
        (f"allowance: the one run's time outside its steps + {ALLOWANCE_PER_POINT_S:.0f} s per point", allowance),
        (f"{m['points']} separate runs, data steps each time (estimate)", separate + m["points"] * (m["one_wall"] - m["one_steps"])),
    ]
    ok = m["sweep_wall"] <= work + allowance
    out = [f"Demo world of {m['demo_size']} scenes, {m['epochs']} epochs; "
           f"cores: {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.1f}", "",
           "| measure | seconds |", "| --- | ---: |"]
    out += [f"| {name} | {seconds:.1f} |" for name, seconds in rows]
    out += ["", f"sweep <= data once + trainings + evaluations + allowance: {'yes' if ok else 'NO'} "
                f"({m['sweep_wall']:.1f} <= {work + allowance:.1f})",
            f"best: {m['best']}; pushed: {', '.join(m['pushed']) or 'nothing'}"]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-size", type=int, default=300, help="Demo scenes (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="Training epochs of every run (default: %(default)s)")
    parser.add_argument("--grid", action="append", default=None, metavar="NAME=V1,V2",
                        help="The sweep's grid (default: batch_size=16,32 and learning_rate=0.002,0.001)")
    parser.add_argument("--runs-dir", help="Where the runs go (default: a temporary folder, removed after)")
    parser.add_argument("--json", metavar="PATH", help="Also write the figures here")
    args = parser.parse_args(argv)
    if args.demo_size < 50 or args.epochs < 1:
        parser.error("--demo-size must be at least 50 (each split needs examples) and --epochs at least 1")
    grid = args.grid or ["batch_size=16,32", "learning_rate=0.002,0.001"]
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        m = measure(os.path.abspath(args.runs_dir or tmp), args.demo_size, args.epochs, grid)
    print(table(m))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(m, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/sweep.py without running the pipeline: the table it prints from measured figures, its verdict, and its
argument checks (the measurement itself is a run and a sweep: tests/e2e/test_sweep_run.py runs a sweep end to end)."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_script():
    spec = importlib.util.spec_from_file_location("sweep_benchmark", os.path.join(ROOT, "benchmarks", "sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIGURES = {"demo_size": 300, "epochs": 2, "grid": {"batch_size": [16, 32], "learning_rate": [0.002, 0.001]},
           "points": 4, "one_wall": 150.0, "one_data": 80.0, "one_model": 50.0, "one_steps": 140.0,
           "sweep_wall": 300.0, "sweep_data": 80.0, "sweep_trainings": 140.0, "sweep_evaluations": 60.0,
           "best": "02-batch_size=16-learning_rate=0.001", "pushed": ["02-batch_size=16-learning_rate=0.001"]}


def test_the_table_sets_the_sweep_beside_one_run_and_says_whether_it_kept_to_the_target():
    bench = _load_script()
    text = bench.table(FIGURES)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1].rstrip(" |") for line in text.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert rows["one run, whole DAG (wall)"] == "150.0"
    assert rows["sweep of 4 points: batch_size 16,32 x learning_rate 0.002,0.001 (wall)"] == "300.0"
    assert rows["… data once + trainings + evaluations"] == "280.0"
    assert rows["… the rest (start-up, demo server, per-point set-up, reports, comparison, push)"] == "20.0"
    # allowance: the one run's 10 s outside its steps + 5 s per point
    assert rows["allowance: the one run's time outside its steps + 5 s per point"] == "30.0"
    assert "sweep <= data once + trainings + evaluations + allowance: yes (300.0 <= 310.0)" in text
    assert bench.table(dict(FIGURES, sweep_wall=400.0)).count(": NO (400.0 <= 310.0)") == 1


@pytest.mark.parametrize("argv", [["--demo-size", "10"], ["--epochs", "0"]])
def test_sizes_too_small_to_split_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        _load_script().main(argv)
    assert e.value.code == 2 and "--demo-size must be at least 50" in capsys.readouterr().err

"""The download ledger out of memory: sorted runs, their merge, and compaction through them give what
the in-memory fold gives, with the batch and run sizes shrunk so that every boundary case happens."""
from __future__ import annotations

import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.common import ledger as contract
from components.common.labels import image_key
from components.download import ledger, logic, merge, store


@pytest.fixture
def tiny(monkeypatch):
    """Runs of 7 rows, batches of 3, merges of 3 inputs, journals read 200 bytes at a time."""
    monkeypatch.setattr(merge, "RUN_ROWS", 7)
    monkeypatch.setattr(merge, "READ_ROWS", 3)
    monkeypatch.setattr(merge, "FAN_IN", 3)
    monkeypatch.setattr(ledger, "JOURNAL_BLOCK", 200)
    monkeypatch.setattr(ledger, "WRITE_ROWS", 5)


def _sorted_tables(keys: list[str], name: str, size: int):
    keys = sorted(keys)
    return [pa.table({"key": keys[i:i + size], "src": [name] * len(keys[i:i + size])}) for i in range(0, len(keys), size)]


def test_merge_hands_over_every_row_of_a_key_in_one_step_in_key_order():
    rng = random.Random(7)
    alphabet = [f"k{i:03d}" for i in range(60)]
    # Keys repeat inside an input too, and batches of 1 to 4 rows cut runs of equal keys.
    inputs = {name: [rng.choice(alphabet) for _ in range(rng.randint(0, 80))] for name in "abcd"}
    sources = [_sorted_tables(keys, name, rng.randint(1, 4)) for name, keys in inputs.items()]
    seen: dict[str, int] = {}
    last = None
    step_of: dict[str, int] = {}
    for step, parts in enumerate(merge.merge(sources)):
        assert len(parts) == 4
        keys = sorted({k for p in parts if p is not None for k in p["key"].to_pylist()})
        assert keys, "a step hands over rows"
        assert last is None or keys[0] > last
        last = keys[-1]
        for p in parts:
            if p is None:
                continue
            for k in p["key"].to_pylist():
                assert step_of.setdefault(k, step) == step, f"{k} came in two steps"
                seen[k] = seen.get(k, 0) + 1
    expected: dict[str, int] = {}
    for keys in inputs.values():
        for k in keys:
            expected[k] = expected.get(k, 0) + 1
    assert seen == expected


def test_merge_of_nothing_and_of_empty_inputs():
    assert list(merge.merge([])) == []
    assert list(merge.merge([[], [pa.table({"key": pa.array([], pa.string())})]])) == []


def test_spiller_sorts_runs_and_merges_them_down_to_fan_in(tmp_path, tiny):
    rng = random.Random(3)
    keys = [f"{rng.randrange(1000):04d}" for _ in range(100)]
    spiller = merge.Spiller(str(tmp_path), "t")
    for i in range(0, 100, 9):
        spiller.add(pa.table({"key": keys[i:i + 9], merge.ORDER: list(range(i, min(i + 9, 100)))}))
    runs = spiller.finish()
    assert 1 <= len(runs) <= 3 and spiller.rows == 100
    back = []
    for r in runs:
        t = pa.concat_tables(list(merge.read_batches(r)))
        ks = t["key"].to_pylist()
        assert ks == sorted(ks)
        back.extend(zip(ks, t[merge.ORDER].to_pylist()))
    assert sorted(back) == sorted(zip(keys, range(100)))
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(r) for r in runs)  # merged runs are deleted


def _row(key, last, status="failed", cls="network", **kw):
    return {"key": key, "url": f"http://x/{key}", "status": status, "error_class": cls, "attempts": 1,
            "first_attempt": "2024-01-01T00:00:00.000000Z", "last_attempt": last, "message": f"{key} at {last}", **kw}


def test_compaction_through_runs_gives_the_in_memory_fold(tmp_path, tiny):
    rng = random.Random(11)
    keys = [f"key{i:03d}" for i in range(40)]
    times = [f"2024-01-0{d}T00:00:00.000000Z" for d in range(1, 5)]  # few times: many ties
    classes = ["network", "http_404", "timeout", "ok"]

    def some_rows(n):
        out = []
        for _ in range(n):
            cls = rng.choice(classes)
            out.append(_row(rng.choice(keys), rng.choice(times), "ok" if cls == "ok" else "failed", cls))
        return out

    root = str(tmp_path / "folder")
    os.makedirs(os.path.join(root, "journal"))
    old = ledger.latest_per_key([ledger.rows_to_table(some_rows(30))])
    pq.write_table(old, os.path.join(root, "ledger.parquet"))
    journals = [some_rows(25), some_rows(40), some_rows(3)]
    for n, rows in enumerate(journals):
        with open(os.path.join(root, "journal", f"2024010{n}T000000000000Z-1-aaaaaa.jsonl"), "wb") as f:
            f.write(b"".join(ledger.journal_line(r) for r in rows))
    base_rows = some_rows(20)
    base = str(tmp_path / "base.parquet")
    pq.write_table(ledger.latest_per_key([ledger.rows_to_table(base_rows)]), base)
    keep = str(tmp_path / "keep.parquet")
    kept = sorted(rng.sample(keys, 25))
    pq.write_table(pa.table({"key": kept}), keep)

    summary = ledger.compact(root, keep=keep, base=base, workdir=str(tmp_path))
    got = contract.read_ledger(os.path.join(root, "ledger.parquet"))
    # The in-memory fold, in the same order: what the store knew, the ledger, then the journals line by line.
    want = ledger.latest_per_key([ledger.rows_to_table(base_rows), old] + [ledger.rows_to_table(r) for r in journals])
    want = want.filter(pa.compute.is_in(want["key"], value_set=pa.array(kept)))
    assert got.to_pylist() == want.to_pylist()
    assert summary == ledger.summarize(want)
    assert os.listdir(os.path.join(root, "journal")) == []
    assert pq.ParquetFile(os.path.join(root, "ledger.parquet")).metadata.num_row_groups >= 2  # written in pieces
    assert [n for n in os.listdir(tmp_path) if n.startswith("ledger-")] == []  # its runs are gone


def test_a_damaged_ledger_is_named(tmp_path):
    root = tmp_path / "folder"
    os.makedirs(root / "journal")
    (root / "ledger.parquet").write_bytes(b"not parquet")
    (root / "journal" / "x.jsonl").write_bytes(ledger.journal_line(_row("a", "2024-01-01T00:00:00.000000Z")))
    with pytest.raises(contract.LedgerError, match=r"ledger\.parquet is not a readable ledger.*move it aside"):
        ledger.compact(str(root))
    assert os.listdir(root / "journal") == ["x.jsonl"]  # nothing lost


def test_check_manifest_sorts_out_of_memory_and_names_a_repeated_key(tmp_path, tiny):
    urls = [f"http://h{i % 3}.test/img/{i}.jpg" for i in range(30)]
    path = str(tmp_path / "manifest.parquet")
    pq.write_table(pa.table({"key": [image_key(u) for u in urls], "url": urls, "row": list(range(2, 32))}), path)
    work = tmp_path / "work"
    os.makedirs(work)
    sorted_path, rows = logic.check_manifest(path, str(work))
    t = pa.concat_tables(list(merge.read_batches(sorted_path)))
    assert rows == 30 and t["key"].to_pylist() == sorted(image_key(u) for u in urls)
    assert dict(zip(t["key"].to_pylist(), t["url"].to_pylist())) == {image_key(u): u for u in urls}

    again = urls + [urls[4], urls[17], urls[4]]
    pq.write_table(pa.table({"key": [image_key(u) for u in again], "url": again, "row": list(range(2, 35))}), path)
    with pytest.raises(logic.DownloadError, match=r"appears (2|3) times \(rows .*; 2 keys repeat\)"):
        logic.check_manifest(path, str(work))


def test_a_store_folds_what_a_killed_run_left_before_the_run_reads_it(tmp_path):
    root = str(tmp_path / "store")
    os.makedirs(os.path.join(root, "journal"))
    with open(os.path.join(root, "journal", "20240101T000000000000Z-1-aaaaaa.jsonl"), "wb") as f:
        f.write(ledger.journal_line(_row("a", "2024-01-01T00:00:00.000000Z")) + b'{"key": "b", "sta')
    s = store.LocalStore(root, store.new_run_id())
    s.open()
    try:
        path = s.prepare(str(tmp_path))
        assert contract.read_ledger(path)["key"].to_pylist() == ["a"]
        s.append([_row("c", "2024-01-02T00:00:00.000000Z")])  # this run's journal is opened after the fold
    finally:
        s.close()
    assert contract.read_ledger(os.path.join(root, "ledger.parquet"))["key"].to_pylist() == ["a", "c"]


def test_a_ledger_half_written_by_a_killed_compaction_is_cleared(tmp_path):
    (tmp_path / "ledger.parquet.4242.tmp").write_bytes(b"half a parquet file")
    (tmp_path / "notes.tmp").write_bytes(b"not ours")
    store.prepare_folder(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".partial", "images", "notes.tmp"]

"""annotate: the Beam transform on the local runner with in-memory items and a stand-in scorer (rows, tallies and
counters checked), the agreement figures against scikit-learn, the listing, the contract, the CLI's bad input."""
from __future__ import annotations

import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that

from components.annotate import listing, logic, transforms
from components.annotate.__main__ import main
from components.annotate.component import annotate
from components.annotate.params import SPEC
from components.common import annotations, beamio, inference, labels

AU_IDS = [1, 2, 12]


class FakeScorer:
    """Stands in for inference.Scorer: an image's bytes say what it holds, e.g. b"faces=2;AU1=0.9,AU12=0.7"
    (every face gets those probabilities), b"none" (no face), b"tiny" (a face too small), b"text" (not an image),
    b"explode" (the model fails on it). Thresholds 0.5."""

    loads = 0

    def __init__(self, model_dir, which_faces="all", batch_size=32, threshold=None, workers=1):
        FakeScorer.loads += 1
        self.workers = workers
        self.threshold = threshold or 0.5
        self.which_faces = which_faces

    def score(self, images, names):
        return [self._one(data.decode(), name) for data, name in zip(images, names)]

    def _one(self, text, name):
        result = {"image": name, "width": 640, "height": 480, "faces": [], "faces_found": 0, "error": None,
                  "reason": None}
        if text == "none":
            return {**result, "reason": "no_face"}
        if text == "tiny":
            return {**result, "reason": "tiny_face", "faces_found": 1}
        if text == "text":
            return {**result, "width": 0, "height": 0, "reason": inference.NOT_IMAGE,
                    "error": f"{name} is not an image that can be read"}
        if text == "explode":
            return {**result, "reason": inference.MODEL_FAILED, "error": f"the model could not score {name}"}
        head, _, probs = text.partition(";")
        count = int(head.split("=")[1])
        p = {k: float(v) for k, v in (kv.split("=") for kv in probs.split(",") if kv)}
        p = {inference.au_key(a): p.get(inference.au_key(a), 0.0) for a in AU_IDS}
        faces = [{"face": i, "status": "cropped", "box": [10.0 * (i + 1), 20.0, 100.0 / (i + 1), 120.0 / (i + 1)],
                  "landmarks": [], "score": 0.9 - 0.1 * i, "angle": 0.0, "probabilities": p,
                  "active": [k for k, v in p.items() if v >= self.threshold]}
                 for i in range(count if self.which_faces == "all" else min(count, 1))]
        return {**result, "faces": faces, "faces_found": count}


# key -> (bytes written, or None for a file that is missing; labels for AU1, AU2, AU12)
IMAGES = {
    "two": (b"faces=2;AU1=0.9,AU12=0.7", [1, 0, 1]),
    "one": (b"faces=1;AU2=0.8", [0, 1, 999]),
    "calm": (b"faces=1;", [1, 0, 0]),
    "none": (b"none", [1, 1, 1]),
    "tiny": (b"tiny", [0, 0, 0]),
    "text": (b"text", [0, 0, 0]),
    "explode": (b"explode", [1, 1, 1]),
    "gone": (None, [0, 0, 0]),
}


def write_images(folder) -> list[dict]:
    items = []
    for key, (data, au) in IMAGES.items():
        path = os.path.join(str(folder), f"{key}.jpg")
        if data is not None:
            with open(path, "wb") as f:
                f.write(data)
        items.append({"key": key, "url": f"http://example.org/{key}.jpg", "path": path, "labels": au})
    return items


# What the pipeline's matchers saw: module-level, so the functions Beam pickles write into this very dict.
_GOT: dict = {}


def _keep_rows(values):
    _GOT["rows"] = list(values)


def _keep_tally(values):
    _GOT["tally"] = list(values)


def test_annotate_images_on_the_local_runner_rows_tallies_and_counters(tmp_path):
    items = write_images(tmp_path)
    FakeScorer.loads = 0
    handler = transforms.ScorerModelHandler("unused", batch_size=3, scorer=FakeScorer)
    pipeline = beam.Pipeline(options=beamio.pipeline_options(""))
    rows, tallies = (pipeline | beam.Create(items)
                     | "Annotate" >> transforms.AnnotateImages(handler, AU_IDS, "20260101T000000Z-abc"))
    assert_that(rows, _keep_rows, label="Rows")
    assert_that(tallies | beam.CombineGlobally(transforms.Tally(len(AU_IDS))), _keep_tally, label="Tally")
    result = pipeline.run()
    result.wait_until_finish()
    got = dict(_GOT)

    rows = got["rows"]
    assert {r["key"] for r in rows} == set(IMAGES)
    assert all(set(r) == set(annotations.columns(AU_IDS)) for r in rows)
    by_key = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
    two = sorted(by_key["two"], key=lambda r: r["face"])
    assert [r["face"] for r in two] == [0, 1] and all(r["status"] == "scored" for r in two)
    assert two[0]["AU1"] == 0.9 and two[0]["AU1_active"] and not two[0]["AU2_active"] and two[0]["AU12_active"]
    assert (two[1]["x"], two[1]["y"], two[1]["w"], two[1]["h"]) == (20.0, 20.0, 50.0, 60.0)
    assert two[0]["model_version"] == "20260101T000000Z-abc" and two[0]["url"] == "http://example.org/two.jpg"
    (none,) = by_key["none"]
    assert none["status"] == "no_face" and none["reason"] == "no_face" and none["face"] is None and none["AU1"] is None
    assert by_key["tiny"][0]["reason"] == "tiny_face" and by_key["tiny"][0]["faces_found"] == 1
    assert by_key["text"][0]["status"] == "bad" and by_key["text"][0]["reason"] == "not_image"
    assert by_key["explode"][0]["reason"] == "model_failed" and "could not score" in by_key["explode"][0]["message"]
    (gone,) = by_key["gone"]
    assert gone["status"] == "bad" and gone["reason"] == "missing" and "gone.jpg does not exist" in gone["message"]

    (tally,) = got["tally"]
    assert tally["images"] == 8 and tally["images_scored"] == 3 and tally["faces"] == 4 and tally["rows"] == 9
    assert tally["no_face"] == {"no_face": 1, "tiny_face": 1}
    assert tally["bad"] == {"not_image": 1, "model_failed": 1, "missing": 1}
    assert tally["positives"] == [2, 1, 2]  # AU1: both faces of "two"; AU2: "one"; AU12: both faces of "two"
    # Agreement on the largest face of the 3 scored images; "one"'s AU12 is 999.
    # AU1: two (1,1) tp, one (0,0) tn, calm (1,0) fn. AU2: two (0,0), one (1,1), calm (0,0). AU12: two tp, calm tn.
    assert tally["compared"] == 3 and tally["labelled"] == 8
    assert tally["confusion"] == [[1, 0, 1, 1], [1, 0, 2, 0], [1, 0, 1, 0]]

    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace(transforms.NAMESPACE))["counters"]}
    assert counters == {"images": 8, "faces": 4, "no_face": 2, "tiny_face": 1, "not_image": 1, "model_failed": 1,
                        "missing": 1}
    assert FakeScorer.loads == 1  # the model is loaded once per worker, not per batch


def test_handler_batches_for_the_scorer():
    handler = transforms.ScorerModelHandler("m", batch_size=7, scorer=FakeScorer, threads=3)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 7}
    batch = [{"item": {"key": "a", "url": "u"}, "data": b"faces=1;AU1=0.7"}, {"item": {"key": "b", "url": "v"},
                                                                              "data": b"none"}]
    assert handler.get_num_bytes(batch) == len(b"faces=1;AU1=0.7") + 4
    scorer = handler.load_model()
    assert scorer.workers == 3  # the face-finding threads it was given
    out = list(handler.run_inference(batch, scorer))
    assert [r.example["key"] for r in out] == ["a", "b"] and out[0].inference["faces"][0]["active"] == ["AU1"]
    assert "data" not in out[0].example  # the image's bytes stop at the model


def test_agreement_matches_scikit_learn():
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, size=(200, 3))
    truth[rng.uniform(size=truth.shape) < 0.2] = 999
    predicted = np.where(rng.uniform(size=truth.shape) < 0.8, truth % 2, 1 - truth % 2)
    total = transforms.empty_tally(3)
    for t, p in zip(truth, predicted):
        transforms.add_tally(total, {"status": "scored", "reason": None, "faces": 1, "positives": p.tolist(),
                                     "first": p.tolist(), "labels": t.tolist()})
    for j in range(3):
        known = truth[:, j] != 999
        a = logic.agreement(total["confusion"][j])
        assert a["known"] == known.sum()
        assert a["accuracy"] == pytest.approx(accuracy_score(truth[known, j], predicted[known, j]))
        assert a["f1"] == pytest.approx(f1_score(truth[known, j], predicted[known, j]))
        assert a["kappa"] == pytest.approx(cohen_kappa_score(truth[known, j], predicted[known, j]))
    # Nothing known: no figure. Both sides constant and equal: accuracy 1, kappa undefined.
    assert logic.agreement([0, 0, 0, 0])["accuracy"] is None
    same = logic.agreement([0, 0, 5, 0])
    assert same["accuracy"] == 1.0 and same["kappa"] is None and same["f1"] is None


def fake_model(folder, au_ids=AU_IDS, task="au") -> str:
    """A model folder as resolve_model and read_model_config see it (the stand-in scorer loads nothing)."""
    os.makedirs(os.path.join(folder, "saved_model"), exist_ok=True)
    open(os.path.join(folder, "saved_model", "saved_model.pb"), "wb").close()
    with open(os.path.join(folder, "model_config.json"), "w") as f:
        json.dump({"task": task, "au_ids": au_ids if task == "au" else [], "faces": {"mode": "crop"}}, f)
    return str(folder)


def write_manifest_and_downloads(root, with_labels=True) -> tuple[str, str]:
    """A manifest of IMAGES (plus one URL whose download failed) and a downloads folder with their ledger."""
    manifest_dir, downloads_dir = root / "manifest", root / "downloads"
    (downloads_dir / "images").mkdir(parents=True)
    manifest_dir.mkdir()
    keys, urls, ledger_rows = [], [], []
    for name, (data, _) in list(IMAGES.items()) + [("failed", (b"", None))]:
        url = f"http://example.org/{name}.jpg"
        key = labels.image_key(url)
        keys.append(key)
        urls.append(url)
        ok = name != "failed"
        if ok and data is not None:
            (downloads_dir / "images" / f"{key}.jpg").write_bytes(data)
        ledger_rows.append({"key": key, "url": url, "status": "ok" if ok else "failed",
                            "error_class": "ok" if ok else "http_404", "format": "jpg" if ok else None,
                            "bytes": len(data or b"")})
    columns = {"key": keys, "url": urls, "row": list(range(1, len(keys) + 1))}
    if with_labels:
        au = np.zeros((len(keys), 60), np.int16)
        for i, (name, (_, label)) in enumerate(list(IMAGES.items()) + [("failed", (None, [0, 0, 0]))]):
            for j, a in enumerate(AU_IDS):
                au[i, a - 1] = label[j]
        columns.update({f"AU{a}": au[:, a - 1] for a in range(1, 61)})
    pq.write_table(pa.table(columns), str(manifest_dir / "manifest.parquet"))
    from components.common import ledger

    table = pa.Table.from_pylist(
        [{c: r.get(c) for c in ledger.COLUMNS} for r in ledger_rows], schema=ledger.SCHEMA)
    pq.write_table(table, str(downloads_dir / "ledger.parquet"))
    return str(manifest_dir), str(downloads_dir)


def test_run_writes_the_contract_and_the_agreement(tmp_path):
    manifest_dir, downloads_dir = write_manifest_and_downloads(tmp_path)
    model = fake_model(tmp_path / "model")
    out = tmp_path / "annotations"
    out.mkdir()
    (out / annotations.shard_name(3, 7)).write_bytes(b"stale")  # an earlier run's shard goes
    summary = logic.run(manifest_dir, downloads_dir, str(out), model=model, batch_size=4, images_per_shard=5,
                        scorer=FakeScorer)
    names = sorted(os.listdir(out))
    shards = [annotations.shard_name(0, 2), annotations.shard_name(1, 2)]
    assert names == sorted(shards + [annotations.SUMMARY_FILE])
    table = annotations.read_annotations(str(out))
    assert table.schema.equals(annotations.schema(AU_IDS))
    assert table.num_rows == 9 and set(table["url"].to_pylist()) == {f"http://example.org/{k}.jpg" for k in IMAGES}
    assert set(table["model_version"].to_pylist()) == {""}  # a model folder outside a registry
    assert annotations.read_summary(str(out)) == summary

    c = summary["counts"]
    assert (c["manifest_rows"], c["not_downloaded"], c["images"], c["faces"], c["no_face"], c["bad"]) == (
        9, 1, 8, 4, 2, 3)
    assert c["bad_reasons"] == {"missing": 1, "model_failed": 1, "not_image": 1}
    assert summary["positives"] == {"AU1": 2, "AU2": 1, "AU12": 2}
    au1 = summary["agreement"]["per_au"]["AU1"]
    assert (au1["known"], au1["accuracy"], au1["f1"]) == (3, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert summary["agreement"]["per_au"]["AU12"]["known"] == 2  # "one"'s AU12 is 999
    assert summary["counters"]["images"] == 8 and summary["shards"] == shards
    text = logic.format_summary(summary)
    assert "8 images: 3 with faces (4 faces), 2 without a face, 3 bad" in text and "macro" in text
    assert not os.path.exists(out / logic.STAGING_DIR)

    # Without labels in the manifest: no agreement.
    manifest_dir, downloads_dir = write_manifest_and_downloads(tmp_path / "plain", with_labels=False)
    summary = logic.run(manifest_dir, downloads_dir, str(tmp_path / "plain-out"), model=model, scorer=FakeScorer)
    assert summary["agreement"] is None and summary["counts"]["images"] == 8


def test_bad_inputs_are_refused_with_what_to_do(tmp_path):
    manifest_dir, downloads_dir = write_manifest_and_downloads(tmp_path)
    model = fake_model(tmp_path / "model")
    out = str(tmp_path / "out")
    with pytest.raises(logic.AnnotateError, match="no downloads folder was given"):
        logic.run(manifest_dir, "", out, model=model, scorer=FakeScorer)
    with pytest.raises(logic.AnnotateError, match="does not exist: pass the folder written by download"):
        logic.run(manifest_dir, str(tmp_path / "nowhere"), out, model=model, scorer=FakeScorer)
    # A registry whose only push never finished: no LATEST.
    os.makedirs(tmp_path / "registry" / "au" / "20260101T000000Z-half" / "saved_model")
    with pytest.raises(logic.AnnotateError, match="has no LATEST"):
        logic.run(manifest_dir, downloads_dir, out, model=str(tmp_path / "registry" / "au"), scorer=FakeScorer)
    with pytest.raises(logic.AnnotateError, match="valence_arousal|va model"):
        logic.run(manifest_dir, downloads_dir, out, model=fake_model(tmp_path / "va", task="va"), scorer=FakeScorer)
    with pytest.raises(logic.AnnotateError, match="not a --flag"):
        logic.run(manifest_dir, downloads_dir, out, model=model, beam_args="runner=Dataflow", scorer=FakeScorer)
    bad = pa.table({"key": ["k"], "url": ["http://x/1.jpg"], "row": [4], "AU1": [2]})
    os.makedirs(tmp_path / "badm")
    pq.write_table(bad, str(tmp_path / "badm" / "manifest.parquet"))
    with pytest.raises(logic.AnnotateError, match=r"row 4 \(key k\): AU1 is 2; expected 0, 1 or 999"):
        logic.run(str(tmp_path / "badm"), downloads_dir, out, model=model, scorer=FakeScorer)
    # Nothing downloaded: nothing to annotate.
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    from components.common import ledger

    pq.write_table(ledger.empty_table(), str(empty / "ledger.parquet"))
    with pytest.raises(logic.AnnotateError, match="nothing to annotate"):
        logic.run(manifest_dir, str(empty), out, model=model, scorer=FakeScorer)
    assert not os.path.exists(os.path.join(out, annotations.SUMMARY_FILE))


def test_listing_makes_a_manifest_of_the_image_files(tmp_path):
    (tmp_path / "pics" / "sub").mkdir(parents=True)
    for name in ("a.jpg", "B.PNG", "sub/c.jpeg", ".hidden.jpg", "notes.txt"):
        (tmp_path / "pics" / name).write_bytes(b"x")
    done = listing.write_manifest(str(tmp_path / "pics"), str(tmp_path / "m"))
    assert done == {"source": str(tmp_path / "pics"), "images": 3, "skipped": 1}
    table = pq.read_table(str(tmp_path / "m" / "manifest.parquet")).to_pydict()
    root = str(tmp_path / "pics")
    assert table["url"] == [os.path.join(root, "B.PNG"), os.path.join(root, "a.jpg"),
                            os.path.join(root, "sub", "c.jpeg")]
    assert table["key"] == [labels.image_key(u) for u in table["url"]] and table["row"] == [1, 2, 3]
    assert listing.is_listing_source(root) and not listing.is_listing_source(str(tmp_path / "sheet.xlsx"))
    assert listing.is_listing_source("gs://b/pics/") and not listing.is_listing_source("gs://b/sheet.xlsx")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(listing.ListingError, match="holds no image"):
        listing.write_manifest(str(tmp_path / "nothing"), str(tmp_path / "m2"))
    with pytest.raises(listing.ListingError, match="is not a folder"):
        listing.write_manifest(str(tmp_path / "pics" / "a.jpg"), str(tmp_path / "m3"))


def test_run_on_a_listing_reads_the_files_where_they_are(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "x.jpg").write_bytes(b"faces=1;AU12=0.9")
    (tmp_path / "pics" / "y.jpg").write_bytes(b"none")
    listing.write_manifest(str(tmp_path / "pics"), str(tmp_path / "m"))
    summary = logic.run(str(tmp_path / "m"), str(tmp_path / "m"), str(tmp_path / "out"),
                        model=fake_model(tmp_path / "model"), scorer=FakeScorer)
    assert summary["counts"]["images"] == 2 and summary["agreement"] is None
    rows = annotations.read_annotations(str(tmp_path / "out")).to_pylist()
    assert {r["url"]: r["status"] for r in rows} == {str(tmp_path / "pics" / "x.jpg"): "scored",
                                                     str(tmp_path / "pics" / "y.jpg"): "no_face"}


def test_the_contract_reader_refuses_an_incomplete_folder(tmp_path):
    with pytest.raises(ValueError, match="not a folder written by annotate"):
        annotations.shard_files(str(tmp_path))
    pq.write_table(annotations.schema(AU_IDS).empty_table(), str(tmp_path / annotations.shard_name(1, 2)))
    with pytest.raises(ValueError, match="lacks annotations-00000-of-00002.parquet"):
        annotations.shard_files(str(tmp_path))
    assert annotations.columns([1, 12])[-5:] == ["AU1", "AU12", "AU1_active", "AU12_active", "model_version"]


def test_local_options_use_a_worker_per_core_only_for_a_big_run(monkeypatch):
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    from components.common import beamio

    monkeypatch.setattr(beamio, "local_cores", lambda: 4)
    small = logic.pipeline_options("", 10).view_as(DirectOptions)
    assert (small.direct_num_workers, small.direct_running_mode) == (1, "in_memory")
    big = logic.pipeline_options("", 100_000).view_as(DirectOptions)
    assert (big.direct_num_workers, big.direct_running_mode) == (4, "multi_processing")
    given = logic.pipeline_options("--direct_num_workers=2", 100_000).view_as(DirectOptions)
    assert given.direct_num_workers == 2
    remote = logic.pipeline_options("--runner=DataflowRunner --project=p", 100_000)
    assert remote.view_as(StandardOptions).runner == "DataflowRunner"
    # Each worker's scorer finds faces on the cores it has to itself: all 4 in this process, 2 each of 2
    # processes, 1 each of 4, and 1 on Dataflow (a process per core).
    threads = [logic.scorer_threads(logic.pipeline_options(args, n)) for args, n in (
        ("", 10), ("--direct_num_workers=2", 100_000), ("", 100_000), ("--runner=DataflowRunner --project=p", 1))]
    assert threads == [4, 2, 1, 1]


def test_component_signature_is_its_declaration():
    assert SPEC.check_component(annotate) == []


def test_cli_help_and_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = "".join(capsys.readouterr().out.split())
    for flag in ("--manifest", "--downloads", "--output", "--model", "--which-faces", "--threshold", "--batch-size",
                 "--beam-args", "--images"):
        assert flag in text
    with pytest.raises(SystemExit) as e:
        main(["--output", str(tmp_path / "o"), "--model", "m"])
    assert e.value.code == 2 and "give either --manifest (with --downloads) or --images" in capsys.readouterr().err
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.jpg").write_bytes(b"x")
    os.makedirs(tmp_path / "registry" / "au" / "20260101T000000Z-half" / "saved_model")
    assert main(["--images", str(tmp_path / "pics"), "--output", str(tmp_path / "o"), "--model",
                 str(tmp_path / "registry" / "au")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refused: annotate: ") and "has no LATEST" in err and "Traceback" not in err
    assert main(["--images", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--model", "m"]) == 2
    assert "is not a folder" in capsys.readouterr().err

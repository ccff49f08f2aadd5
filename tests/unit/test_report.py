"""The report step: the run report from the step outputs' folders alone (the KFP UI's HTML artifact); its CLI as a program is in
tests/integration/test_report_cli.py."""
import pytest

from components.report import logic
from pipeline.dag import STEPS


def folders(tmp_path) -> dict[str, str]:
    out = {}
    for name, step in logic.REPORT_INPUTS:
        (tmp_path / step / name).mkdir(parents=True)
        out[name] = str(tmp_path / step / name)
    return out


def test_the_report_reads_every_step_of_the_dag_but_itself():
    assert [step for _, step in logic.REPORT_INPUTS] == [s for s in STEPS if s != "report"]


def test_a_page_from_the_folders_alone_lists_every_step_without_times(tmp_path):
    given = folders(tmp_path)
    (tmp_path / "ingest" / "manifest" / "ingest_summary.json").write_text('{"kept": 7, "rejected": 1, "au_counts": {}}')
    out = tmp_path / "run-1" / "report" / "page"
    assert logic.run(given, str(out)) == str(out)
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<title>Run run-1: succeeded</title>" in page
    for _, step in logic.REPORT_INPUTS:
        assert f"<td class=\"l\">{step}</td><td class=\"l\">succeeded</td><td>-</td>" in page
    assert "7 rows kept, 1 rejected" in page  # the key figures come from the outputs
    assert "no metrics in this run" in page and not (out.parent / "page.tmp").exists()


def test_a_missing_output_is_named(tmp_path):
    given = folders(tmp_path)
    del given["model"], given["pushed"]
    with pytest.raises(ValueError, match="missing: model, pushed"):
        logic.render_outputs(given, str(tmp_path))



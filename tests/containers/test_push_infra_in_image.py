"""Push's infra validation in the CPU image (--infra-image): the candidate, served by the image's code in a container
(`docker run`), answers evaluate's canonical requests as the host's scorer did and is pushed; a broken one is refused
the same way as in a subprocess, and no container is left behind, also when the server is not ready in time."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from components.common import examples as ex
from components.common import registry
from components.evaluate import canonical
from components.push import infra, logic

import tiny_model as tiny  # tests/conftest.py puts tests/data/evaluate on the path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def candidate(tmp_path_factory) -> dict:
    """tiny_model's model and a blessed evaluation whose canonical requests (3 pictures of 48 px, they are too small
    at 8, and the faceless one) carry the answers of the shared scorer on this machine."""
    tmp = tmp_path_factory.mktemp("infra-image")
    model = tiny.make_model(str(tmp / "model"))
    examples = tmp / "examples"
    examples.mkdir()
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(examples / ex.shard_name("test", 0, 1))) as w:
        for i, colour in enumerate([(230, 20, 20), (20, 230, 20), (20, 20, 230)]):
            au = [int(c > 128) for c in colour]
            w.write(ex.make_example(tiny.jpeg(colour, size=48), 48, 48, f"test{i:04d}", tiny.AU_IDS, au)
                    .SerializeToString())
    evaluation = tiny.make_evaluation(str(tmp / "evaluation"), True)
    canonical.write(evaluation, model, str(examples))
    return {"model": model, "evaluation": evaluation}


def _container(check: dict) -> str:
    """The name of the container the check ran, from the command it recorded."""
    command = check["command"]
    return command[command.index("--name") + 1]


def _left(name: str) -> str:
    """The ids of any container of that name, running or stopped ("" when it is gone)."""
    return subprocess.run(["docker", "ps", "--all", "--quiet", "--filter", f"name=^/{name}$"], capture_output=True,
                          text=True, timeout=60, check=True).stdout.strip()


def test_a_sound_candidate_passes_in_the_image_and_a_broken_one_is_refused(images, candidate, tmp_path):
    dest = str(tmp_path / "registry")
    out = tmp_path / "out"
    record = logic.run(candidate["model"], candidate["evaluation"], str(out), destination=dest, model_name="au",
                       infra_image=images["cpu"])
    check = json.loads((out / registry.PUSH_FILE).read_text())["infra_validation"]
    assert check["passed"] and check["reason"] == "" and check["checked"] == 4 and check["notes"] == [], check
    assert check["image"] == images["cpu"] and check["command"][:2] == ["docker", "run"], check
    assert check["command"][check["command"].index(images["cpu"]) + 1:][:3] == ["python", "-m", "components.serve"]
    assert record["pushed"] and registry.read_latest(os.path.join(dest, "au")) == record["version"]
    assert _left(_container(check)) == ""

    broken = str(tmp_path / "broken")
    shutil.copytree(candidate["model"], broken)
    Path(broken, "saved_model", "saved_model.pb").write_bytes(b"not a graph")
    refused = logic.run(broken, candidate["evaluation"], str(out), destination=dest, model_name="au",
                        infra_image=images["cpu"])
    saved = json.loads((out / registry.PUSH_FILE).read_text())
    assert not refused["pushed"] and saved["infra_validation"]["image"] == images["cpu"]
    assert saved["infra_validation"]["passed"] is False
    assert "before it was ready" in saved["infra_validation"]["reason"], saved["infra_validation"]
    assert any(r.startswith("infra validation failed: the server exited") for r in saved["reasons"])
    assert registry.read_latest(os.path.join(dest, "au")) == record["version"]
    assert _left(_container(saved["infra_validation"])) == ""


def test_a_server_not_ready_in_time_is_stopped_and_its_container_removed(images, candidate):
    check = infra.validate(candidate["model"], candidate["evaluation"], ready_timeout_s=1, image=images["cpu"])
    assert not check["passed"] and "not ready after 1 s" in check["reason"], check
    assert _left(_container(check)) == ""
    assert check["seconds"] < infra.STOP_TIMEOUT_S  # stopped at once (--init), not killed after the grace period

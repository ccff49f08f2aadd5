"""Fixtures of the integration tests: the loopback fake of the KFP REST API, with the client's context file kept out."""
import pytest

from kfp_fake import FakeKFP


@pytest.fixture
def kfp_context(tmp_path, monkeypatch):
    """The KFP client reads (and in multi-user mode writes) ~/.config/kfp/context.json: keep it out of the test."""
    import kfp

    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))


@pytest.fixture
def kfp_server(kfp_context):
    with FakeKFP() as server:
        yield server

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Tests use a morphzoo cache of their own (shared within the session, inherited by CLI subprocesses), so they
    never depend on or pollute the user's cache. anny's own model cache (~/.cache/anny) is left alone."""
    monkeypatch.setenv("MORPHZOO_CACHE", str(tmp_path_factory.getbasetemp() / "morphzoo-cache"))

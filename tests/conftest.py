import pytest


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Tests use a morphzoo cache of their own (shared within the session, inherited by CLI subprocesses), so they
    never depend on or pollute the user's cache. Session-scoped, so it is in place before any module-scoped fixture.
    anny's own model cache (~/.cache/anny) is left alone."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MORPHZOO_CACHE", str(tmp_path_factory.getbasetemp() / "morphzoo-cache"))
        yield

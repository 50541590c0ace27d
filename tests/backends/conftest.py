import pytest


@pytest.fixture(autouse=True)
def _triton_cache_in_tmp(tmp_path_factory):
    """Generated Triton sources go to the session's temporary directory, not the user's cache."""
    from kiln.backends.triton import cache  # imported here: test modules set TRITON_INTERPRET first
    cache.set_cache_dir(tmp_path_factory.getbasetemp() / "kiln-triton")
    yield

"""One xdist group per model, so that under ``-n 2 --dist loadgroup`` (scripts/test.sh) each model's engine is
built by one worker instead of by every worker its tests land on."""
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        spec = getattr(item, "callspec", None)
        row = spec.params.get("row") if spec is not None else None
        if row is not None and "real_models" in str(item.path):
            item.add_marker(pytest.mark.xdist_group(f"real_model_{row.name}"))

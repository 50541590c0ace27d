"""Every case of the official ONNX node suite passes, or is listed in excluded.txt with its reason."""
import warnings

import pytest

from node_suite import load_cases, load_exclusions, run_case

EXCLUDED = load_exclusions()
CASES = load_cases()


def test_exclusions_name_real_cases():
    names = {c.name for c in CASES}
    stale = sorted(set(EXCLUDED) - names)
    assert not stale, f"excluded.txt names cases that do not exist: {stale[:10]}"
    assert all(EXCLUDED.values()), "every exclusion needs a reason"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_case(case):
    if case.name in EXCLUDED:
        pytest.skip(EXCLUDED[case.name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_case(case)

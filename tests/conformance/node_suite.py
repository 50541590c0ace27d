"""The official ONNX backend node suite through kiln.parse + kiln.interpret.

Run as a script for a report (``python tests/conformance/node_suite.py [-k REGEX] [-v] [--device cuda]``);
test_node_suite.py runs the same cases under pytest. Cases that Kiln does not pass on purpose are listed
with their reason in excluded.txt, next to this file.
"""
from __future__ import annotations

import argparse
import functools
import re
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import kiln  # noqa: E402

CASE_TIMEOUT_S = 120


@functools.cache
def load_cases():
    import onnx.backend.test.loader as loader
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loader.load_model_tests(kind="node")


def load_exclusions(path: Path = HERE / "excluded.txt") -> dict[str, str]:
    """``case_name: reason`` per line; blank lines and '#' comments ignored."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(":")
        out[name.strip()] = reason.strip()
    return out


def _as_comparable(a):
    a = np.asarray(a)
    if a.dtype.kind == "V" or a.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
                                                "float8_e5m2fnuz", "float4_e2m1fn", "float8_e8m0fnu"):
        return a.astype(np.float32)
    if a.dtype.name in ("int4", "uint4", "int2", "uint2"):
        return a.astype(np.int16)
    return a


def compare(name: str, expected, got, rtol: float, atol: float) -> None:
    """Raise AssertionError when ``got`` differs from ``expected`` (tensor, list=sequence, None=empty optional)."""
    if isinstance(expected, list):
        assert isinstance(got, list), f"{name}: expected a sequence, got {type(got).__name__}"
        assert len(expected) == len(got), f"{name}: sequence length {len(got)}, expected {len(expected)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            compare(f"{name}[{i}]", e, g, rtol, atol)
        return
    if expected is None:
        assert got is None, f"{name}: expected an empty optional, got {type(got).__name__}"
        return
    assert got is not None, f"{name}: got nothing, expected {np.asarray(expected).dtype}{list(np.shape(expected))}"
    expected = np.asarray(expected)
    got = np.asarray(got)
    assert expected.dtype == got.dtype, f"{name}: dtype {got.dtype}, expected {expected.dtype}"
    assert expected.shape == got.shape, f"{name}: shape {got.shape}, expected {expected.shape}"
    if expected.dtype == object:
        assert (expected == got).all(), f"{name}: values differ"
        return
    e, g = _as_comparable(expected), _as_comparable(got)
    np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=name, equal_nan=True)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout(f"case took longer than {CASE_TIMEOUT_S}s")


def _normalize(item):
    """Cases built in memory hold protos for some tensors, sequences and optionals: make them numpy/lists."""
    import onnx
    from onnx import numpy_helper
    if isinstance(item, onnx.TensorProto):
        return numpy_helper.to_array(item)
    if isinstance(item, onnx.SequenceProto):
        return [_normalize(x) for x in numpy_helper.to_list(item)]
    if isinstance(item, onnx.OptionalProto):
        return _normalize(numpy_helper.to_optional(item))
    return item


def run_case(case, device: str = "cpu") -> None:
    """Run one node case; raise on any mismatch or error."""
    graph = kiln.parse(case.model)
    names = [i.name for i in case.model.graph.input if i.name not in {t.name for t in case.model.graph.initializer}]
    out_names = [o.name for o in case.model.graph.output]
    for inputs, outputs in case.data_sets:
        inputs, outputs = [_normalize(x) for x in inputs], [_normalize(x) for x in outputs]
        feed = {n: x for n, x in zip(names, inputs)}
        got = kiln.interpret(graph, feed, device=device)
        if device != "cpu":
            got = {k: _to_numpy(v) for k, v in got.items()}
        for n, expected in zip(out_names, outputs):
            compare(n, expected, got[n], case.rtol, case.atol)


def _to_numpy(x):
    import torch
    if isinstance(x, torch.Tensor):
        return x.cpu().numpy()
    if isinstance(x, list):
        return [_to_numpy(e) for e in x]
    return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-k", default="", help="regex on case names")
    ap.add_argument("-v", action="store_true", help="print every failure in full")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--include-excluded", action="store_true", help="also run the excluded cases")
    ap.add_argument("--list-failing", help="write the names of failing cases to this file")
    args = ap.parse_args(argv)
    excluded = load_exclusions()
    pat = re.compile(args.k)
    cases = [c for c in load_cases() if pat.search(c.name)]
    passed, failed, skipped, failing = 0, 0, 0, []
    signal.signal(signal.SIGALRM, _alarm)
    t0 = time.time()
    for case in cases:
        if case.name in excluded and not args.include_excluded:
            skipped += 1
            continue
        signal.alarm(CASE_TIMEOUT_S)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run_case(case, args.device)
            passed += 1
        except BaseException as e:  # noqa: BLE001 - the report lists every kind of failure
            if isinstance(e, KeyboardInterrupt):
                raise
            failed += 1
            failing.append(case.name)
            msg = f"{type(e).__name__}: {e}"
            if not args.v:
                msg = msg.splitlines()[0][:300] if msg else msg
            print(f"FAIL {case.name}: {msg}")
        finally:
            signal.alarm(0)
    if args.list_failing:
        Path(args.list_failing).write_text("\n".join(failing) + "\n")
    total = len(load_cases()) if not args.k else len(cases)
    print(f"\nsuite: {total} cases; {skipped} excluded (listed in excluded.txt); {time.time() - t0:.1f}s")
    print(f"{passed} passed, {failed + skipped} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

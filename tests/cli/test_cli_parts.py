"""In-process checks of the CLI's parsing and display helpers (fast; the subprocess tests cover the rest)."""
import io

import pytest

from kiln.cli.errors import CLIError
from kiln.cli.progress import Progress
from kiln.cli.shapes import format_shapes, parse_name_files, parse_shapes
from kiln.cli.timing import Record, Summary, stats


def test_parse_shapes_forms():
    assert parse_shapes("x:1x3x224x224,mask:1x128") == {"x": (1, 3, 224, 224), "mask": (1, 128)}
    assert parse_shapes("'input:0':2x3") == {"input:0": (2, 3)}
    assert parse_shapes("in:0:4") == {"in:0": (4,)}  # dims follow the last colon
    assert parse_shapes("s:") == {"s": ()}
    assert format_shapes({"x": (1, 3)}) == "x:1x3"
    for bad in ("x", "x:1xa", ":1x2", "x:-1x2", ""):
        with pytest.raises(CLIError):
            parse_shapes(bad)


def test_parse_name_files():
    assert parse_name_files("x:a.npy,'in:0':b.bin", "--loadInputs") == {"x": "a.npy", "in:0": "b.bin"}
    with pytest.raises(CLIError, match="NAME:FILE"):
        parse_name_files("x", "--loadInputs")


def test_progress_live_redraws_one_line_with_eta_and_plain_prints_lines():
    out = io.StringIO()
    p = Progress("live", out)
    for i in range(4):
        p("tuning", i, 3 if i < 4 else 3, f"candidate {i}")
    text = out.getvalue()
    assert text.count("\r") == 4 and "tuning" in text and "ETA" in text and text.endswith("\n")
    out = io.StringIO()
    p = Progress("plain", out)
    for i in range(0, 101):
        p("tuning", i, 100, "")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and 1 <= len(lines) <= 3  # long stages are throttled, the end is kept
    assert lines[-1].startswith("[kiln] tuning 100/100")


def test_summary_warnings():
    recs = [Record(0, i, 1.0, 0.7, 1.0 + 0.3 * (i % 2), 0.6, 3.0) for i in range(10)]
    s = Summary(recs, 1.0, "cuda:0")
    w = " ".join(s.warnings())
    assert "Enqueue Time" in w and "transfers" in w and "unstable" in w
    s = Summary([Record(0, i, 1.0, 0, 1.0, 0, 1.0) for i in range(10)], 1.0, "cpu")
    assert s.warnings() == [] and s.throughput == 10
    assert "H2D Latency: 0 ms (zero-cost on CPU)" in s.lines()
    st = stats([1, 2, 3, 4], (50,))
    assert st.median == 2.5 and st.percentiles[50] == 2.5


def test_quant_flags_map_to_builder_fields():
    from kiln.cli.buildflags import quant_fields
    assert quant_fields(False, False, None, None, None) == {}
    assert quant_fields(True, False, "c.cache", None, None) == {
        "int8": True, "fp8": False, "calibration_cache": "c.cache"}
    with pytest.raises(CLIError, match="does not exist or is not a folder"):
        quant_fields(True, False, None, "/no/such/folder", None)

"""--json and --quiet on every subcommand (kiln/cli/output.py): --json prints one parseable document on stdout,
--quiet prints nothing on stdout and no warnings, and the exit code is the same either way."""
import json

import numpy as np
import pytest

from cli_support import kiln

# Each subcommand with the arguments that make it succeed in the `work` folder (tiny.onnx, tiny.engine).
COMMANDS = {
    "build": ["build", "tiny.onnx", "-o", "out_{mode}.engine", "--shapes", "x:2x3x8x8"],
    "run": ["run", "tiny.engine", "--shapes", "x:2x3x8x8"],
    "bench": ["bench", "tiny.engine", "--shapes", "x:2x3x8x8", "--iterations", "3", "--duration", "0",
              "--warmup", "0"],
    "inspect": ["inspect", "tiny.engine"],
    "compare": ["compare", "tiny.onnx", "tiny.engine", "--shapes", "x:2x3x8x8"],
    "exec": ["exec", "--loadEngine=tiny.engine", "--shapes=x:2x3x8x8", "--iterations=3", "--duration=0",
             "--warmUp=0"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_json_is_one_document_and_quiet_prints_nothing(work, name):
    d, _ = work
    args = COMMANDS[name]
    as_json = kiln(*[a.format(mode="json") for a in args], "--json", cwd=d, check=0)
    doc = json.loads(as_json.stdout)  # the whole of stdout is one JSON document
    assert isinstance(doc, dict) and doc
    quiet = kiln(*[a.format(mode="quiet") for a in args], "--quiet", cwd=d, check=0)
    assert quiet.stdout == ""
    assert "warning" not in quiet.stderr.lower()


def test_json_documents_carry_the_results(work):
    d, _ = work
    built = json.loads(kiln(*[a.format(mode="doc") for a in COMMANDS["build"]], "--json", cwd=d, check=0).stdout)
    assert built["engine"] == "out_doc.engine" and built["report"]["layers"]
    ran = json.loads(kiln(*COMMANDS["run"], "--json", cwd=d, check=0).stdout)
    y = ran["outputs"]["y"]
    assert y["shape"] == [2, 4] and np.asarray(y["values"]).shape == (2, 4)
    compared = json.loads(kiln(*COMMANDS["compare"], "--json", cwd=d, check=0).stdout)
    assert compared["ok"] is True
    executed = json.loads(kiln(*COMMANDS["exec"], "--json", cwd=d, check=0).stdout)
    assert executed["passed"] is True and executed["performance"]


def test_quiet_keeps_errors_and_exit_codes(work):
    d, _ = work
    p = kiln("run", "missing.engine", "--quiet", cwd=d)
    assert p.returncode == 1 and p.stdout == "" and "missing.engine" in p.stderr


def test_sign_and_verify_speak_json(work):
    d, _ = work
    pytest.importorskip("cryptography")
    keys = json.loads(kiln("sign", "--generate-key", "k_json", "--json", cwd=d, check=0).stdout)
    assert keys["key"] and keys["public_key"] == "k_json.pub"
    signed = json.loads(kiln("sign", "tiny.engine", "--key", "k_json", "-o", "signed.engine", "--json", cwd=d,
                             check=0).stdout)
    assert signed["key"] == keys["key"]
    checked = json.loads(kiln("verify", "signed.engine", "--trusted-key", "k_json.pub", "--json", cwd=d,
                              check=0).stdout)
    assert checked == {"engine": "signed.engine", "key": keys["key"], "trusted": True, "ok": True}

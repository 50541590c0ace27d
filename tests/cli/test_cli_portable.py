"""`kiln sign` / `kiln verify`, weight-stripped engines through `kiln build` / `kiln exec`, run in-process
(main(argv))."""
import shutil

from kiln.cli.main import main


def test_sign_and_verify(work, tmp_path, capsys):
    d, _ = work
    shutil.copy(d / "tiny.engine", tmp_path / "e.engine")
    assert main(["sign", "--generate-key", str(tmp_path / "k")]) == 0
    assert main(["sign", "--generate-key", str(tmp_path / "other")]) == 0
    assert main(["verify", str(tmp_path / "e.engine")]) == 1
    assert "is not signed" in capsys.readouterr().err
    assert main(["sign", str(tmp_path / "e.engine"), "--key", str(tmp_path / "k"),
                 "-o", str(tmp_path / "s.engine")]) == 0
    assert main(["verify", str(tmp_path / "s.engine"), "--trusted-key", str(tmp_path / "k.pub")]) == 0
    assert "a trusted key" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "s.engine"), "--trusted-key", str(tmp_path / "other.pub")]) == 1
    assert "not among the trusted keys" in capsys.readouterr().err
    data = bytearray((tmp_path / "s.engine").read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "t.engine").write_bytes(bytes(data))
    assert main(["verify", str(tmp_path / "t.engine"), "--trusted-key", str(tmp_path / "k.pub")]) == 1
    assert "invalid signature" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "s.engine"), "--trusted-key", str(tmp_path / "k")]) == 1  # a private key
    assert "not an Ed25519 public key" in capsys.readouterr().err


def test_stripped_engine_through_build_and_exec(work, tmp_path, capsys):
    d, _ = work
    plan, full = tmp_path / "plan.engine", d / "tiny.engine"
    assert main(["build", str(d / "tiny.onnx"), "-o", str(plan), "--shapes", "x:2x3x8x8", "--device", "cpu",
                 "--strip-weights", "--progress", "off"]) == 0
    assert plan.stat().st_size < full.stat().st_size  # a tiny model: its weights are a small part
    assert main(["exec", f"--loadEngine={plan}", "--shapes=x:2x3x8x8", "--iterations=1", "--warmUp=0",
                 "--duration=0"]) == 1
    assert "saved without its weights" in capsys.readouterr().err
    assert main(["exec", f"--loadEngine={plan}", f"--onnx={d / 'tiny.onnx'}", "--shapes=x:2x3x8x8",
                 "--iterations=1", "--warmUp=0", "--duration=0"]) == 0
    assert "with the weights of" in capsys.readouterr().out


def test_exec_accepts_trtexecs_compatibility_flags(work, tmp_path, capsys):
    # --versionCompatible / --hardwareCompatibilityLevel: every Kiln engine already loads under another version
    # of its format and on another device, so trtexec command lines that ask for it build as they are.
    d, _ = work
    plan = tmp_path / "vc.engine"
    assert main(["exec", f"--onnx={d / 'tiny.onnx'}", f"--saveEngine={plan}", "--shapes=x:2x3x8x8", "--buildOnly",
                 "--device=cpu", "--versionCompatible", "--hardwareCompatibilityLevel=ampere+"]) == 0
    assert plan.is_file() and "&&&& PASSED" in capsys.readouterr().out

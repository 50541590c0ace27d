"""`kiln sign` / `kiln verify`, run in-process (main(argv)): a key pair, a signature, and the refusals."""
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

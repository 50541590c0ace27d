"""Signed engines: Ed25519 over the whole file, checked before anything in it is parsed."""
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

import engine_seeds
import kiln
from kiln.engine import format as fmt
from kiln.engine import signing
from kiln.errors import EngineFormatError

DATA = Path(__file__).parent.parent / "data" / "engines"


@pytest.fixture(scope="module")
def keys():
    return Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def engine(small_model):
    return kiln.build(small_model, optimization_level=1)


def _raw_public(key) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw_private(key) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def test_signed_engine_loads_with_its_key_as_object_or_raw_bytes(engine, keys, tmp_path):
    key, _ = keys
    x = np.ones((2, 4, 8, 8), np.float32)
    want = engine.create_execution_context().infer({"x": x})["y"]
    for signing_key, trusted in [(key, key.public_key()), (_raw_private(key), _raw_public(key))]:
        engine.save(tmp_path / "e.kiln", signing_key=signing_key)
        loaded = kiln.Engine.load(tmp_path / "e.kiln", trusted_keys=[trusted])
        assert loaded.signed_by == signing.fingerprint(_raw_public(key))
        np.testing.assert_array_equal(loaded.create_execution_context().infer({"x": x})["y"], want)
    # Without trusted keys a signed engine still loads (its signature checked against the key it names).
    assert kiln.Engine.load(tmp_path / "e.kiln").signed_by is not None


def test_every_changed_byte_of_a_signed_engine_is_refused(engine, keys):
    key, _ = keys
    data = engine.serialize(signing_key=key)
    trusted = [key.public_key()]
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(EngineFormatError):
            kiln.Engine.deserialize(bytes(bad), trusted_keys=trusted)


def test_changed_payload_is_refused_before_the_header_is_read(engine, keys, monkeypatch):
    key, _ = keys
    data = bytearray(engine.serialize(signing_key=key))
    data[40] ^= 0xFF  # inside the header JSON
    monkeypatch.setattr(fmt.validate, "check_header", lambda h: pytest.fail("header read before the signature"))
    with pytest.raises(EngineFormatError, match="invalid signature"):
        kiln.Engine.deserialize(bytes(data), trusted_keys=[key.public_key()])


def test_unknown_signer_and_unsigned_engines_are_refused_when_keys_are_trusted(engine, keys):
    key, other = keys
    with pytest.raises(EngineFormatError, match="not among the trusted keys"):
        kiln.Engine.deserialize(engine.serialize(signing_key=other), trusted_keys=[key.public_key()])
    with pytest.raises(EngineFormatError, match="not signed"):
        kiln.Engine.deserialize(engine.serialize(), trusted_keys=[key.public_key()])
    with pytest.raises(EngineFormatError, match="not among the trusted keys"):
        kiln.Engine.deserialize(engine.serialize(signing_key=key), trusted_keys=[])  # trust nobody


def test_a_signature_is_replaced_not_stacked(engine, keys):
    key, other = keys
    twice = signing.sign(engine.serialize(signing_key=other), key)
    assert len(twice) == len(engine.serialize()) + signing.TRAILER_BYTES
    assert kiln.Engine.deserialize(twice, trusted_keys=[key.public_key()]).signed_by is not None


def test_format_1_engine_is_signed_as_format_2(keys):
    key, _ = keys
    data = (DATA / "mlp_format1_kiln0.1.0.bin").read_bytes()
    assert struct.unpack("<I", data[8:12])[0] == 1
    signed = signing.sign(data, key)
    assert struct.unpack("<I", signed[8:12])[0] == 2
    loaded = kiln.Engine.deserialize(signed, trusted_keys=[_raw_public(key)])
    feed = engine_seeds.feed("mlp")
    want = kiln.Engine.deserialize(data).create_execution_context().infer(feed)
    got = loaded.create_execution_context().infer(feed)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_bad_keys_are_type_errors(engine):
    with pytest.raises(TypeError, match="signing_key"):
        engine.serialize(signing_key=b"short")
    with pytest.raises(TypeError, match="trusted key"):
        kiln.Engine.deserialize(engine.serialize(signing_key=Ed25519PrivateKey.generate()), trusted_keys=["k"])

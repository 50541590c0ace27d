"""The build report: what each engine layer is, what was fused or rejected and why, memory, pass times."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class LayerInfo:
    name: str
    op: str
    covers: list[str]  # ONNX node names this layer stands for
    kernel: str
    precision: str
    output_shapes: list[list]  # at the opt shape of the first profile (or the model's static shapes)
    tactic: str = ""  # the implementation chosen (tuned, cached, replayed or default), e.g. "cudnn/layout=nhwc"
    time_ms: float | None = None  # its measured time at the opt shape (None when not timed)
    candidates: dict = field(default_factory=dict)  # candidate -> median ms (a number) or why rejected (a string)


@dataclass
class BuildReport:
    layers: list[LayerInfo] = field(default_factory=list)
    rejections: list[dict] = field(default_factory=list)  # {"rule", "nodes", "reason"}
    fusions: dict[str, int] = field(default_factory=dict)  # rule -> times applied
    memory: dict[str, int] = field(default_factory=dict)  # arena_bytes, naive_bytes, lower_bound_bytes
    pass_seconds: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # fallbacks and warnings the user should see
    onnx_nodes: int = 0
    quantization: dict = field(default_factory=dict)  # calibration, quantized layers, measured accuracy, kept
    build_seconds: float = 0.0
    tuning: dict = field(default_factory=dict)  # timed, cache_hits, seconds, budget_exceeded, untuned_for_budget

    def to_json(self) -> dict:
        d = asdict(self)
        d["pass_seconds"] = [list(p) for p in self.pass_seconds]
        return d

    @staticmethod
    def from_json(d: dict) -> "BuildReport":
        r = BuildReport(**{k: v for k, v in d.items() if k in BuildReport.__dataclass_fields__ and k != "layers"})
        r.layers = [LayerInfo(**x) for x in d.get("layers", [])]
        r.pass_seconds = [tuple(p) for p in d.get("pass_seconds", [])]
        return r

    def summary(self) -> str:
        m = self.memory
        lines = [f"{self.onnx_nodes} ONNX nodes -> {len(self.layers)} engine layers in {self.build_seconds:.2f}s"]
        if self.fusions:
            lines.append("rewrites: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.fusions.items())))
        if m:
            lines.append(f"memory: arena {_mib(m.get('arena_bytes', 0))}, lower bound "
                         f"{_mib(m.get('lower_bound_bytes', 0))}, naive {_mib(m.get('naive_bytes', 0))}")
        if self.rejections:
            lines.append(f"{len(self.rejections)} fusion candidates rejected (see report.rejections)")
        if self.quantization.get("layers"):
            q = self.quantization
            lines.append(f"reduced precision: {len(q['layers'])} quantized layers ({q.get('calibration')}); "
                         f"see report.quantization")
        if self.tuning:
            t = self.tuning
            lines.append(f"tactics: {t.get('layers', 0)} layers "
                         f"{'replayed' if t.get('replayed') else 'tuned'} in {t.get('seconds', 0):.2f}s, "
                         f"{t.get('timed', 0)} candidates timed, {t.get('cache_hits', 0)} from the timing cache"
                         + (f"; budget exceeded, {len(t.get('untuned_for_budget', []))} layers kept their default"
                            if t.get("budget_exceeded") else ""))
            for why, count in (t.get("not_tuned") or {}).items():
                lines.append(f"tactics: {count} layers not tuned: {why}")
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)

    def layer_table(self) -> str:
        rows = [("layer", "op", "kernel", "precision", "tactic", "ms", "covers")]
        for l in self.layers:
            covers = ", ".join(l.covers[:4]) + (f" (+{len(l.covers) - 4})" if len(l.covers) > 4 else "")
            ms = "" if l.time_ms is None else f"{l.time_ms:.4f}"
            rows.append((l.name, l.op, l.kernel, l.precision, l.tactic, ms, covers))
        widths = [min(max(len(str(r[i])) for r in rows), 48) for i in range(len(rows[0]))]
        return "\n".join("  ".join(shorten(str(c), w).ljust(w) for c, w in zip(r, widths)) for r in rows)


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, never cut inside a word: a long layer name keeps its last
    path components ("/model/layers.3/attention/MatMul" -> "…/attention/MatMul"), where names differ; a text
    without separators keeps its start and end ("convolution_with_bias" -> "convol…h_bias")."""
    if len(text) <= width:
        return text
    if width < 4:
        return text[:width]
    for i, ch in enumerate(text):
        if ch in "/.:" and len(text) - i + 1 <= width:  # the longest tail starting at a separator that fits
            return "\u2026" + text[i:]
    head = (width - 1) // 2
    return text[:head] + "\u2026" + text[len(text) - (width - 1 - head):]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"

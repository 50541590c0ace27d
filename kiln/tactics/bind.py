"""Binding at engine load: each layer's stored tactic choice made into a kernel for this device."""
from __future__ import annotations

import torch

from .choice import TORCH, Choice, NotApplicable
from .library import TacticLibrary
from .space import DEFAULT, default_choice


def bind_tactics(nodes, constants: dict, device: torch.device, notes: list | None = None,
                 choices: dict | None = None, library: TacticLibrary | None = None) -> dict:
    """{node: Tactic} for an engine being loaded: each layer's stored choice (``node.meta["tactic"]``), else its
    default (oneDNN for CPU Conv/Linear). A stored choice that cannot be made here runs the op's own kernel
    and says why in ``notes``. ``choices`` collects {label: Choice} actually made for layers with a space.
    ``library``: the tactics the engine was built with (default: Kiln's own, ``space.DEFAULT``)."""
    library = DEFAULT if library is None else library
    out = {}
    for n in nodes:
        stored = n.meta.get("tactic")
        if not stored and not library.has_space(n):
            continue
        choice = Choice.from_json(stored) if stored else default_choice(n, device)
        try:
            t = library.make(choice, n, constants, device)
        except NotApplicable as e:
            # e.g. an engine tuned on a GPU loaded on the CPU: the layer runs what it runs here untuned
            stored_label, choice, t = choice.label, TORCH, None
            fallback = default_choice(n, device) if stored else TORCH
            if fallback != TORCH:
                try:
                    choice, t = fallback, library.make(fallback, n, constants, device)
                except NotApplicable:
                    choice, t = TORCH, None
            if stored and notes is not None:
                notes.append(f"layer {n.label}: stored tactic {stored_label} is not available here ({e}); "
                             f"running {choice.label} instead")
        if choices is not None:
            choices[n.label] = choice
        if t is not None:
            out[n] = t
    return out

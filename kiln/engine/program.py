"""A Graph compiled into a flat list of steps: kernel, input ids, output ids, prebuilt KernelContext and
the values to free after it. This is the per-inference hot path, so it does as little as possible."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import KernelError, KilnError
from ..ir.graph import Graph, Node, outer_reads
from ..ops import KernelContext, Registry
from ..runtime.interpreter import Interpreter


@dataclass
class Step:
    node: Node
    kernel: Callable
    inputs: tuple
    outputs: tuple
    attrs: dict
    ctx: KernelContext
    free: tuple  # value ids whose last reader is this step


class Program:
    """Executes a graph's steps on one device. Constants are bound once (shared by all contexts)."""

    def __init__(self, graph: Graph, device: torch.device, registry: Registry, constants: dict[int, torch.Tensor]):
        self.graph = graph
        self.device = device
        self.constants = constants
        self._sub = Interpreter(graph, device, registry)  # runs If/Loop/Scan bodies
        self._sub._consts = constants
        opset = graph.opsets.get("", 21)
        last: dict[int, int] = {}
        for i, n in enumerate(graph.nodes):
            for v in n.inputs:
                if v is not None:
                    last[v.id] = i
            for sg in n.subgraphs():
                for v in outer_reads(sg):
                    last[v.id] = i
        keep = {v.id for v in graph.outputs} | set(constants)
        frees: dict[int, list[int]] = {}
        for vid, i in last.items():
            if vid not in keep:
                frees.setdefault(i, []).append(vid)
        self.steps: list[Step] = []
        for i, n in enumerate(graph.nodes):
            opdef = registry.get(n.domain, n.op_type)
            if opdef is None:
                raise KernelError(f"layer {n.label}: no kernel for {n.domain + '::' if n.domain else ''}{n.op_type}")
            ctx = KernelContext(opset=opset, device=device, num_outputs=len(n.outputs),
                                output_types=[o.type if o is not None else None for o in n.outputs],
                                node_name=n.label)
            if any(True for _ in n.subgraphs()):
                ctx.run_graph = self._subgraph_runner()
            self.steps.append(Step(n, opdef.kernel, tuple(None if v is None else v.id for v in n.inputs),
                                   tuple(None if v is None else v.id for v in n.outputs), n.attrs, ctx,
                                   tuple(frees.get(i, ()))))
        self.output_ids = [v.id for v in graph.outputs]
        self.input_ids = [v.id for v in graph.inputs]

    def _subgraph_runner(self):
        env_holder: dict[str, Any] = {}

        def run(sub: Graph, sub_inputs: list) -> list:
            env = env_holder["env"]
            for v, x in zip(sub.inputs, sub_inputs):
                env[v.id] = x
            return self._sub.run_graph(sub, env)

        run.env_holder = env_holder  # type: ignore[attr-defined]
        return run

    def run(self, env: dict[int, Any], hook: Callable | None = None) -> list[Any]:
        """Run all steps; ``env`` maps value id -> runtime value and must hold the graph inputs."""
        env.update(self.constants)
        for step in self.steps:
            args = [None if i is None else env[i] for i in step.inputs]
            if step.ctx.run_graph is not None:
                step.ctx.run_graph.env_holder["env"] = env  # type: ignore[attr-defined]
            try:
                out = step.kernel(step.ctx, args, step.attrs)
            except KilnError:
                raise
            except Exception as e:  # noqa: BLE001 - any kernel failure names its layer
                raise KernelError(f"layer {step.node.label} ({step.node.op_type}) failed: {type(e).__name__}: {e}") from e
            if isinstance(out, torch.Tensor) or not isinstance(out, tuple):
                out = (out,)
            for vid, r in zip(step.outputs, out):
                if vid is not None:
                    env[vid] = r
            if hook is not None:
                hook(step, env)
            for vid in step.free:
                env.pop(vid, None)
        return [env[i] for i in self.output_ids]

"""A Graph compiled into a flat list of steps: kernel, input ids, output ids, prebuilt KernelContext and
the values to free after it. This is the per-inference hot path, so it does as little as possible."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import KernelError, KilnError
from ..ir.graph import Graph, Node, outer_reads
from ..ops import KernelContext, Registry
from ..runtime.interpreter import last_uses
from .aliases import storage_roots
from .bodies import BodyRunner
from .placement import plan_body_placement, plan_placement, to_device


def accepts_out(kernel: Callable, device: torch.device) -> bool:
    """Whether ``kernel`` computes straight into an ``out=`` buffer on ``device``: its ``accepts_out``
    attribute lists the device types where it does (a kernel that would copy into ``out`` does not count)."""
    where = getattr(kernel, "accepts_out", ())
    return device.type in where


def layer_kernel(node: Node, registry: Registry, tactics: dict | None, on_host: bool) -> tuple[Callable, Any]:
    """(kernel, tactic or None) that ``node``'s layer runs: its bound tactic's, else its op's own; a layer placed
    on the host always runs its op's own. The Program and the build's lowering (which decides from it which
    layers write into a given buffer) both ask here."""
    opdef = registry.get(node.domain, node.op_type)
    if opdef is None:
        raise KernelError(f"layer {node.label}: no kernel for "
                          f"{node.domain + '::' if node.domain else ''}{node.op_type}")
    tactic = None if on_host else (tactics or {}).get(node)
    return (opdef.kernel if tactic is None else tactic.kernel), tactic


@dataclass
class Step:
    node: Node
    kernel: Callable
    inputs: tuple
    outputs: tuple
    attrs: dict
    ctx: KernelContext
    free: tuple  # value ids whose last reader is this step
    tactic: str = ""  # the device-specific implementation chosen at load ("" for the op's own kernel)
    moves: tuple = ()  # input slots whose host value is copied to the device first (GPU engines)
    reads: tuple = ()  # value ids read, inputs and those its subgraphs read from this scope (for lifetimes)
    accepts_out: bool = False  # its kernel can compute straight into a given buffer (``out=``)
    in_place: tuple = ()  # Concat: input positions whose producers write into its output's slices
    threads: int | None = None  # CPU: the intra-op threads this layer runs with (None: the run's own setting)


def with_threads(kernel: Callable, threads: int) -> Callable:
    """``kernel`` run with ``threads`` intra-op threads, the caller's setting restored after (also on an error).
    For small CPU layers, measured at build (kiln/tune/layer_threads.py): waking the pool's sleeping threads
    costs them more than sharing the work saves. Torch's setting is per thread of the caller, so contexts in
    other threads are not affected."""
    def run(ctx, inputs, attrs, **kw):
        own = torch.get_num_threads()
        if own == threads:
            return kernel(ctx, inputs, attrs, **kw)
        torch.set_num_threads(threads)
        try:
            return kernel(ctx, inputs, attrs, **kw)
        finally:
            torch.set_num_threads(own)
    run.accepts_out = getattr(kernel, "accepts_out", ())  # type: ignore[attr-defined]
    run.__wrapped__ = kernel  # type: ignore[attr-defined]
    return run


def _layer_failed(step: Step, e: Exception) -> KernelError:
    return KernelError(f"layer {step.node.label} ({step.node.op_type}) failed: {type(e).__name__}: {e}")


class Program:
    """Executes a graph's steps on one device. Constants are bound once (shared by all contexts).

    ``tactics`` maps nodes to a chosen implementation (an object with ``name`` and ``kernel``) that replaces
    the op's own kernel for that layer, e.g. a oneDNN convolution holding its reordered weight."""

    def __init__(self, graph: Graph, device: torch.device, registry: Registry, constants: dict[int, torch.Tensor],
                 tactics: dict | None = None):
        self.graph = graph
        self.device = device
        self.constants = constants
        opset = graph.opsets.get("", 21)
        keep = {v.id for v in graph.outputs} | set(constants)
        frees = {i: [vid for vid in vids if vid not in keep] for i, vids in last_uses(graph).items()}
        placement = plan_placement(graph, registry) if device.type == "cuda" else None
        self._sub = BodyRunner(graph, device, registry, constants,  # runs If/Loop/Scan bodies
                               None if placement is None else plan_body_placement(graph, registry, placement))
        host = torch.device("cpu")
        self.steps: list[Step] = []
        for i, n in enumerate(graph.nodes):
            on_host = placement is not None and id(n) in placement.host_nodes
            kernel, tactic = layer_kernel(n, registry, tactics, on_host)
            ctx = KernelContext(opset=opset, device=host if on_host else device, num_outputs=len(n.outputs),
                                output_types=[o.type if o is not None else None for o in n.outputs],
                                node_name=n.label)
            if any(True for _ in n.subgraphs()):
                ctx.run_graph = self._subgraph_runner()
            threads = n.meta.get("threads") if ctx.device.type == "cpu" else None
            if threads is not None:
                kernel = with_threads(kernel, int(threads))
            inputs = tuple(None if v is None else v.id for v in n.inputs)
            reads = tuple(dict.fromkeys([i for i in inputs if i is not None] +
                                        [v.id for sg in n.subgraphs() for v in outer_reads(sg)]))
            self.steps.append(Step(n, kernel, inputs,
                                   tuple(None if v is None else v.id for v in n.outputs), n.attrs, ctx,
                                   tuple(frees.get(i, ())), "" if tactic is None else tactic.name,
                                   placement.moves.get(id(n), ()) if placement is not None else (),
                                   reads, accepts_out(kernel, ctx.device),
                                   tuple(int(k) for k in n.attrs.get("in_place", ())), threads))
        self.output_ids = [v.id for v in graph.outputs]
        # Graph inputs that stay on the host (GPU engines): their values steer host work (an If's branch), so a
        # CUDA graph or arena layout captured for one value holds only for that value (runtime.py keys by them).
        self.host_inputs: frozenset[str] = placement.host_inputs if placement is not None else frozenset()
        self.aliases = storage_roots(graph, registry)  # which values share storage (the arena places by it)
        # An output that is an engine constant (folded at build) goes to the caller as a copy: the caller may
        # write into what it gets, and the next run must not see that.
        self._constant_outputs = [i for i, vid in enumerate(self.output_ids) if vid in constants]
        self._unplaced = [None] * len(self.steps)  # the placements of a run without an arena
        self.input_ids = [v.id for v in graph.inputs]

    def _subgraph_runner(self):
        # The env of the run in progress, per thread: the contexts of an engine share its Program and may run at
        # once from several threads (a shared holder let one thread's If body write into another's env).
        env_holder = threading.local()

        def run(sub: Graph, sub_inputs: list) -> list:
            env = env_holder.env
            for v, x in zip(sub.inputs, sub_inputs):
                env[v.id] = x
            return self._sub.run_graph(sub, env)

        run.env_holder = env_holder  # type: ignore[attr-defined]
        return run

    def run(self, env: dict[int, Any], hook: Callable | None = None, keep: list | None = None,
            layout=None) -> list[Any]:
        """Run all steps; ``env`` maps value id -> runtime value and must hold the graph inputs.

        ``keep`` collects host buffers copied to the device (a CUDA graph capture must keep them alive).
        ``layout`` (kiln/engine/arena.py) gives steps the arena buffers to write their outputs into."""
        env.update(self.constants)
        self._sub.keep_copies_in(keep)
        if hook is not None:
            return self._run_hooked(env, hook)
        placements = layout.placements if layout is not None else self._unplaced
        step = None
        try:  # the hot loop: one dict read per input, one write per output
            for step, p in zip(self.steps, placements):
                if step.ctx.run_graph is not None:
                    step.ctx.run_graph.env_holder.env = env  # type: ignore[attr-defined]
                args = [None if i is None else env[i] for i in step.inputs]
                for j in step.moves:
                    if args[j] is not None:
                        args[j] = to_device(args[j], self.device, keep)
                if p is None:
                    out = step.kernel(step.ctx, args, step.attrs)
                else:
                    out = self._run_placed_step(step, p, args, layout)
                if isinstance(out, torch.Tensor) or not isinstance(out, tuple):
                    vid = step.outputs[0] if step.outputs else None
                    if vid is not None:
                        env[vid] = out
                else:
                    for vid, r in zip(step.outputs, out):
                        if vid is not None:
                            env[vid] = r
                for vid in step.free:
                    env.pop(vid, None)
        except KilnError:
            raise
        except Exception as e:  # noqa: BLE001 - any kernel failure names its layer
            raise _layer_failed(step, e) from e
        return self._results(env)

    def _results(self, env: dict[int, Any]) -> list[Any]:
        outs = [env[i] for i in self.output_ids]
        for i in self._constant_outputs:
            if isinstance(outs[i], torch.Tensor):
                outs[i] = outs[i].clone()
        return outs

    @staticmethod
    def _run_placed_step(step: Step, p, args: list, layout) -> Any:
        """One step given its arena buffer (see arena.py); returns its (single) output."""
        if p.concat is not None:  # its in-place inputs are already in their slices
            for view, k in p.concat_copies:
                view.copy_(args[k])
            return p.concat
        out = step.kernel(step.ctx, args, step.attrs, out=p.out) if step.accepts_out else \
            step.kernel(step.ctx, args, step.attrs)
        if isinstance(out, tuple):
            out = out[0]
        if out is not p.out and (out.data_ptr() != p.out.data_ptr() or out.stride() != p.out.stride()):
            if p.must_land:  # the kernel kept its own buffer: the Concat slice needs the data
                p.out.copy_(out)
                return p.out
            layout.missed.add(step.node.label)
        return out

    def _run_hooked(self, env: dict[int, Any], hook: Callable) -> list[Any]:
        for step in self.steps:
            args = [None if i is None else env[i] for i in step.inputs]
            for j in step.moves:
                if args[j] is not None:
                    args[j] = to_device(args[j], self.device, None)
            if step.ctx.run_graph is not None:
                step.ctx.run_graph.env_holder.env = env  # type: ignore[attr-defined]
            try:
                out = step.kernel(step.ctx, args, step.attrs)
            except KilnError:
                raise
            except Exception as e:  # noqa: BLE001 - any kernel failure names its layer
                raise _layer_failed(step, e) from e
            if isinstance(out, torch.Tensor) or not isinstance(out, tuple):
                out = (out,)
            for vid, r in zip(step.outputs, out):
                if vid is not None:
                    env[vid] = r
            hook(step, env)
            for vid in step.free:
                env.pop(vid, None)
        return self._results(env)

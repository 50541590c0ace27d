"""Ahead-of-time compilation of generated sources for a GPU target, without a GPU: Triton's whole pipeline
(TTIR, TTGIR, LLVM IR, PTX, cubin through its bundled ptxas) runs on the host. The tests use it to check that
the GPU form of every generated kernel compiles, libdevice calls included, where no GPU is available."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ...errors import KilnError
from .cache import exec_source
from .codegen import ElementwiseSpec, Generated

TY = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
      torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8",
      torch.bool: "i1"}


def elementwise_signature(spec: ElementwiseSpec, gen: Generated) -> dict[str, str]:
    sig = {"out_ptr": "*" + TY[gen.out_dtype]}
    for k, (dt, lay) in enumerate(zip(spec.dtypes, spec.layouts)):  # pointers of the non-constant operands
        if not isinstance(lay, tuple):
            sig[f"in{k}_ptr"] = "*" + TY[dt]
    for name in gen.scalar_args:
        sig[name] = "i64" if spec.int64 else "i32"
    return sig


def compile_source(source: str, signature: dict[str, str], constexprs: dict, arch: int = 90, num_warps: int = 4,
                   num_stages: int = 3):
    """Compile ``source``'s ``kernel`` for sm_``arch``; returns Triton's CompiledKernel (``.asm['ptx']``).
    ``@triton.jit`` must make real JIT functions, so Triton must not be interpreting in this process (a process
    that is, as the tests are, compiles through ``compile_in_subprocess``)."""
    import triton
    from triton.backends.compiler import GPUTarget

    from .launch import interpreting
    if interpreting():
        raise KilnError("ahead-of-time compilation needs Triton's compiler, but Triton is interpreting in this "
                        "process (TRITON_INTERPRET=1): use compile_in_subprocess")
    return _compile(triton, GPUTarget, source, signature, constexprs, arch, num_warps, num_stages)


def _compile(triton, GPUTarget, source, signature, constexprs, arch, num_warps, num_stages):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "kiln_aot_kernel.py"
        path.write_text(source)  # (for the file name in Triton's line info; the text itself is run below)
        fn = exec_source(source, str(path), "kiln_aot_kernel").kernel  # never imported: no .pyc is ever read
        src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps,
                                                                                 "num_stages": num_stages})


def compile_in_subprocess(jobs: list[dict], arch: int = 90, timeout: float = 300) -> list[str]:
    """Compile each job ({source, signature, constexprs, num_warps, expect: strings the PTX must hold}) in a
    fresh Python whose environment lacks Triton's interpreter switch TRITON_INTERPRET (Triton's standard library
    made under the interpreter cannot be compiled for a GPU); this process's environment is left as it is.
    Returns "" per job that compiled, else the error."""
    import json
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "jobs.json"
        path.write_text(json.dumps(jobs))
        r = subprocess.run([sys.executable, "-m", "kiln.backends.triton.aot", str(path), str(arch)], env=env,
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"aot compile failed: {r.stderr[-2000:]}")
        return json.loads(Path(d, "jobs.json.out").read_text())


def _main(argv: list[str]) -> None:
    import json
    path, arch = argv[0], int(argv[1]) if len(argv) > 1 else 90
    out = []
    for job in json.loads(Path(path).read_text()):
        try:
            k = compile_source(job["source"], job["signature"], job["constexprs"], arch, job.get("num_warps", 4),
                               job.get("num_stages", 3))
            ptx = k.asm["ptx"]
            missing = [w for w in [f".target sm_{arch}"] + list(job.get("expect", ())) if w not in ptx]
            out.append(f"PTX lacks {missing}" if missing else "")
        except Exception as e:  # noqa: BLE001 - reported per job
            out.append(f"{type(e).__name__}: {e}")
    Path(path + ".out").write_text(json.dumps(out))


if __name__ == "__main__":
    import sys
    _main(sys.argv[1:])

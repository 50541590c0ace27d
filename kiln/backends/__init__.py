"""Device backends beyond the ops' own torch kernels: ``triton`` generates kernels for fused regions.

An elementwise op the generator can emit is one row of ``triton/ops.py``; the layers it compiles are in
``triton/layers.py``; which of them a build may choose is kiln/tactics (space.py)."""

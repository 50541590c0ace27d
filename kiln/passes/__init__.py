"""Graph passes: each file one rewrite of a kiln Graph, run in the order ``pipeline.py`` lists (read it first).

Where things live:
- ``pipeline.py``: the list of named steps (``Pass(name, fn)``) the builder runs; a build takes ``pipeline=``.
- ``context.py``: PassContext, what a pass may ask (config, registry, shapes and dtypes via ``propagate.py``,
  ``reject`` to record why a rewrite did not apply, ``notes`` for the report).
- ``rewrite.py``: small helpers to replace nodes and make constants.
- Recognizers (``recognize.py``: GELU, HardSwish, SiLU, LayerNorm, RMSNorm; ``recognize_attention.py``), fusions
  (``fuse_epilogue.py`` into kiln::Conv/Linear, ``fuse_elementwise.py`` into kiln::Elementwise regions,
  ``fuse_batchnorm.py``, ``fuse_horizontal.py``), cleanups (``fold_constants.py``, ``fold_pad.py``, ``dead_code.py``,
  ``common_subexpr.py``, ``noops.py``, ``shape_reads.py``, ``symbolic_shapes.py``), layout (``layout.py``,
  ``attention_layout.py``),
  precision (``precision.py``) and quantization (``quantize_*.py``), onnxruntime contrib ops lowered to standard
  ops (``lower_contrib.py``).
A new fusion rule is a function ``(graph, ctx) -> changed`` in the file of its kind, added to the pipeline.
What an op *is* (elementwise, a view, ...) is asked of the op registry (kiln/ops), never listed here.
"""

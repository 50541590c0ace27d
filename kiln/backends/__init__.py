"""Device backends beyond the ops' own torch kernels: ``triton`` generates kernels for fused regions."""

"""Ops of the 'shape' family."""
from __future__ import annotations

import torch

from .registry import OpSet

ops = OpSet("shape")

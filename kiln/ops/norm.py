"""Ops of the 'norm' family."""
from __future__ import annotations

import torch

from .registry import OpSet

ops = OpSet("norm")

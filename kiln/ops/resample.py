"""Ops of the 'resample' family."""
from __future__ import annotations

import torch

from .registry import OpSet

ops = OpSet("resample")

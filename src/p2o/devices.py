"""What the machine has: one CUDA check for every part of p2o (config defaults, evaluation backends).
This module imports nothing from p2o, so every layer may use it."""

from __future__ import annotations


def cuda_available() -> bool:
    """True when torch imports and sees a CUDA GPU; a torch that fails to import counts as no GPU
    (the problem is reported where torch is really needed)."""
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False

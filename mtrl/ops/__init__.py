"""Fused categorical TD-target and loss ops (C++ on CPU, CUDA on GPU) and their references.

``categorical_td_target`` and ``categorical_cross_entropy`` are ``torch.library`` custom ops
(eager, ``torch.compile``, CUDA graphs); the ``*_reference`` functions are the plain-PyTorch
documented semantics they are tested against (brc-spec §2.2, §3.2, §3.3).
"""

from mtrl.ops.reference import (
    categorical_cross_entropy_reference,
    categorical_projection,
    categorical_td_target_reference,
    hl_gauss_target_reference,
)
from mtrl.ops.td_target import categorical_cross_entropy, categorical_td_target, hl_gauss_target

__all__ = [
    "categorical_cross_entropy",
    "categorical_cross_entropy_reference",
    "categorical_projection",
    "categorical_td_target",
    "categorical_td_target_reference",
    "hl_gauss_target",
    "hl_gauss_target_reference",
]

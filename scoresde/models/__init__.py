"""Score networks (NCSN++/DDPM++, DDPM, NCSNv2), their layers, and the checkpoint converter.

- :func:`from_config`: a reference-style config -> a ``flax.linen`` module.
- :func:`from_score_sde_pytorch`: a score_sde_pytorch state dict or checkpoint -> (module,
  variables); :func:`to_score_sde_pytorch` the other way.
- :class:`NCSNpp`: NCSN++ and DDPM++ (Song et al., 2021).
- :class:`DDPM`: the DDPM U-Net (Ho et al., 2020).
- :class:`NCSNv2`, :class:`NCSN`: the RefineNets of NCSNv2 and NCSN (Song & Ermon, 2020, 2019).
- :func:`cast_to_compute_dtype`: parameters converted once to the dtype a network computes
  them in (bfloat16 inference).
- :class:`GroupNorm` (and the function in :mod:`scoresde.models.group_norm`): GroupNorm
  (+ SiLU), one fused kernel on CUDA GPUs.
"""

from scoresde.models.compute_dtype import cast_to_compute_dtype
from scoresde.models.convert import from_score_sde_pytorch, to_score_sde_pytorch
from scoresde.models.ddpm import DDPM
from scoresde.models.factory import from_config
from scoresde.models.group_norm import GroupNorm
from scoresde.models.ncsnpp import NCSNpp
from scoresde.models.ncsnv2 import NCSN, NCSNv2

__all__ = [
    "DDPM",
    "GroupNorm",
    "NCSN",
    "NCSNpp",
    "NCSNv2",
    "cast_to_compute_dtype",
    "from_config",
    "from_score_sde_pytorch",
    "to_score_sde_pytorch",
]

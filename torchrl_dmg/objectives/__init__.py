"""Loss modules, mirroring :mod:`torchrl.objectives`."""

from torchrl_dmg.objectives.dmg import DMGLoss
from torchrl_dmg.objectives.in_sample import (
    IN_SAMPLE_ESTIMATORS,
    expectile_loss,
    gumbel_loss,
    sparse_loss,
)

__all__ = ["DMGLoss", "IN_SAMPLE_ESTIMATORS", "expectile_loss", "gumbel_loss", "sparse_loss"]

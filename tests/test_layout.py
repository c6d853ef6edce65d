"""The package's layout promises (docs/design.md): importing it changes nothing outside it,
and λ, ν are schedulable buffers set by assignment."""

from __future__ import annotations

import subprocess
import sys

import torch

from torchrl_dmg.modules import make_dmg_networks
from torchrl_dmg.objectives import DMGLoss

IMPORT_EVERYTHING = """
import pkgutil, importlib, sys
import gymnasium as gym
from tensordict import TensorDict
before_ids, before_from_any = set(gym.registry), TensorDict.from_any.__func__
import torchrl_dmg
for module in pkgutil.walk_packages(torchrl_dmg.__path__, "torchrl_dmg."):
    importlib.import_module(module.name)
ours = sorted(k for k in set(gym.registry) - before_ids if k.startswith("torchrl_dmg"))
print(ours, TensorDict.from_any.__func__ is before_from_any,
      [m for m in ("omegaconf", "hydra") if m in sys.modules])
"""


def test_importing_every_module_registers_patches_and_configures_nothing():
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[] True []"


def test_mixture_and_penalty_coefficients_are_assigned_in_place():
    actor, qvalue, value = make_dmg_networks(3, 2, -1.0, 1.0, num_cells=(8, 8))
    loss = DMGLoss(actor, qvalue, value, bounds=(-1.0, 1.0))
    buffer = loss.mixture_coef
    loss.mixture_coef = 0.5
    loss.penalty_coef = 0.005
    assert loss.mixture_coef is buffer  # the same tensor: compiled code sees the new value
    assert float(loss.mixture_coef) == 0.5
    assert torch.isclose(loss.penalty_coef, torch.tensor(0.005))

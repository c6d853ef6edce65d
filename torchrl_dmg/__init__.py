"""torchrl-dmg: Doubly Mild Generalization (DMG, NeurIPS 2024) for TorchRL."""

from torchrl_dmg._compat import speed_up_tensordict_module_outputs

speed_up_tensordict_module_outputs()

__version__ = "0.1.0"

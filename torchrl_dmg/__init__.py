"""torchrl-dmg: Doubly Mild Generalization (DMG, NeurIPS 2024) for TorchRL.

Importing the package changes nothing outside it: the tensordict speed-up
(:func:`torchrl_dmg._compat.speed_up_tensordict_module_outputs`) is applied by the
updaters that benefit from it, and Gymnasium ids are registered by the functions that
make those envs.
"""

__version__ = "0.1.0"

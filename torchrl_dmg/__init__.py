"""torchrl-dmg: Doubly Mild Generalization (DMG, NeurIPS 2024) for TorchRL."""

__version__ = "0.1.0"

"""Minari datasets for DMG: storage, loading as TensorDicts, normalisation, samplers.
It never generates a dataset (see :mod:`torchrl_dmg.datagen`)."""

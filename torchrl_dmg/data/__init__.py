"""Minari datasets for DMG: loading, normalisation and local generation."""

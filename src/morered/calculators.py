"""ASE calculators shipped with morered: ``ForceField`` (the PaiNN force fields trained here)."""

from morered.forcefield.calculator import ForceField

__all__ = ["ForceField"]

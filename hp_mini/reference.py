"""The literal SOMP oracle, :func:`reference_somp`: kept here for existing imports.

It lives in :mod:`hp_mini.pursuit.reference`.
"""

from hp_mini.pursuit.reference import ReferenceSOMP, reference_somp

__all__ = ["ReferenceSOMP", "reference_somp"]

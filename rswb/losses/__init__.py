"""Losses, one module per method; each returns a dict of named terms (``{"nce_loss": ..., "affil_loss": ...}``).

Importing this package registers the method losses (:func:`rswb.registry.create_loss`).
"""

from rswb.losses import dual, fisvl, kamcl  # noqa: F401  (registers the retrieval methods' losses)

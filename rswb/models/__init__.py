"""Models. Importing this package registers every model builder (``rswb.registry.create_model``)."""

from rswb.models import backbones, hashing, pha  # noqa: F401  (registers the backbones, "dhcl" and the PHA versions)

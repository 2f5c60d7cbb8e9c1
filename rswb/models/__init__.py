"""Models. Importing this package registers every model builder (``rswb.registry.create_model``)."""

from rswb.models import backbones, hashing, pha, text  # noqa: F401  (registers backbones, "dhcl", PHA, text encoders)

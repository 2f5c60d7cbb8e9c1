"""Models. Importing this package registers every model builder (``rswb.registry.create_model``)."""

from rswb.models import backbones, dual, fisvl, hashing, hf, kamcl, pha, retrieval, text  # noqa: F401  (registers every model builder)

"""Task builders for ``rswb train``: each joins a dataset, a model and a :class:`rswb.engine.Task`.

Importing this package registers the built-in tasks (see ``rswb train --list``); a builder takes one config
dataclass and returns a :class:`rswb.engine.TaskBundle`.
"""

from rswb.tasks import hashing, pha, retrieval  # noqa: F401,E402  (registers "hash", "pha", "retrieval")

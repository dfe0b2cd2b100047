"""Generic tasks of the library (the built-in world's task lives in :mod:`unigrpo.shapes`).

``prompts``: prompts from a file, registered rewards with weights, mean-reward
evaluation (:mod:`.prompts`).
"""

from .prompts import PromptsTask, read_prompts

__all__ = ["PromptsTask", "read_prompts"]

"""Built-in RL tasks (prompt sets with verifiable image rewards).

``shapes``: GenEval-like shapes/colours/counting/position benchmark with
reasoning riddles; see :mod:`unigrpo.tasks.shapes`.
"""

from . import shapes

__all__ = ["shapes"]

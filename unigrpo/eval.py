"""``python -m unigrpo.eval``: the built-in world's GenEval-style evaluation (:mod:`unigrpo.shapes.eval`)."""

from .shapes.eval import main

if __name__ == "__main__":
    raise SystemExit(main())

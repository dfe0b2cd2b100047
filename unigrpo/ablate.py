"""``python -m unigrpo.ablate``: the paper's ablations on the built-in world (:mod:`unigrpo.shapes.ablate`)."""

from .shapes.ablate import main

if __name__ == "__main__":
    raise SystemExit(main())

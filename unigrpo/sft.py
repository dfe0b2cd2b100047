"""``python -m unigrpo.sft``: the built-in model's supervised warm start (:mod:`unigrpo.shapes.sft`)."""

from .shapes.sft import main

if __name__ == "__main__":
    raise SystemExit(main())

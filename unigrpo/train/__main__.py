"""python -m unigrpo.train [--config FILE.yaml] [--resume RUN_DIR] [task=NAME] [section.key=value ...]

--resume continues a run from its last checkpoint with the run's own saved config
(overrides given beside it still apply); a run killed before its first checkpoint
starts again from its beginning. An expected failure (bad config value, missing or
corrupt file, unusable device or output directory) exits with code 2 and one line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import ArgumentParser, RUN_ERRORS, SETUP_ERRORS, attempt, fail
from . import checkpointing, distributed
from .config import help_text, load
from .trainer import Trainer

PROG = "python -m unigrpo.train"


def _run_config(run_dir: Path) -> Path | None:
    """The config a resumed run continues with: the run's ``config.yaml``; if the run died
    before writing it, its newest checkpoint's copy; else none (the command line's)."""
    own = run_dir / "config.yaml"
    if own.exists():
        return own
    found = checkpointing.checkpoints(run_dir)
    return found[-1] / "config.yaml" if found else None


def main(argv=None) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="config keys (default, allowed range):\n" + help_text())
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.beta_v=0.01, and task=NAME")
    p.add_argument("--config", help="YAML file with config sections (task, model, rollout, loss, optim, train)")
    p.add_argument("--resume", help="run directory (or checkpoint directory) to continue from")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_intermixed_args(argv)  # overrides may come before or after the flags
    run_dir = None
    if args.resume:  # a run directory, or one of its checkpoint-* directories
        run_dir = Path(args.resume)
        run_dir = run_dir.parent if checkpointing.is_checkpoint(run_dir) else run_dir
        if not run_dir.is_dir():
            return fail(f"--resume {args.resume}: no such run directory", PROG)

    def setup() -> Trainer:
        cfg = load(args.config or (_run_config(run_dir) if run_dir else None), args.overrides)
        if run_dir is not None:
            cfg.train.output_dir = str(run_dir)
        return Trainer(cfg, resume=args.resume, progress=not args.no_progress)

    trainer, code = attempt(setup, SETUP_ERRORS, PROG)
    if code:
        return code
    if trainer.iteration == 0 and args.resume:
        print(f"{PROG}: {run_dir} has no checkpoint yet: starting it from its beginning", file=sys.stderr)
    history, code = attempt(trainer.fit, RUN_ERRORS, PROG)
    distributed.shutdown(finished=not code)
    if code:
        return code
    evals = [h for h in history if "eval/overall" in h]
    if evals:
        print(f"held-out overall: {evals[0]['eval/overall']:.3f} (iteration {evals[0]['iteration']}) -> "
              f"{evals[-1]['eval/overall']:.3f} (iteration {evals[-1]['iteration']}); run: {trainer.run_dir}")
    return 0

if __name__ == "__main__":
    code = main()
    if distributed.launched_size() > 1:
        distributed.exit_process(code)
    sys.exit(code)

"""python -m unigrpo.train [--config FILE.yaml] [--resume RUN_DIR] [task=NAME] [section.key=value ...]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import load, valid_keys
from .trainer import Trainer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m unigrpo.train", description=__doc__,
                                epilog="valid keys: " + ", ".join(valid_keys()))
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.beta_v=0.01, and task=NAME")
    p.add_argument("--config", help="YAML file with config sections (task, model, rollout, loss, optim, train)")
    p.add_argument("--resume", help="run directory (or checkpoint directory) to continue from")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_intermixed_args(argv)  # overrides may come before or after the flags
    run_dir = None
    if args.resume:  # a run directory, or one of its checkpoint-* directories
        run_dir = Path(args.resume)
        run_dir = run_dir.parent if run_dir.name.startswith("checkpoint-") else run_dir
    try:
        # resuming continues the run's own resolved config unless another is given
        cfg = load(args.config or (run_dir / "config.yaml" if run_dir else None), args.overrides)
    except (KeyError, ValueError) as e:
        print(f"config error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # --config FILE, or --resume DIR without its config.yaml
        print(f"error: {e}", file=sys.stderr)
        return 2
    if run_dir is not None:
        cfg.train.output_dir = str(run_dir)
    try:
        trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress)
    except ValueError as e:  # a task, policy or reward that cannot be built from the config
        print(f"config error: {e}", file=sys.stderr)
        return 2
    history = trainer.fit()
    evals = [h for h in history if "eval/overall" in h]
    if evals:
        print(f"held-out overall: {evals[0]['eval/overall']:.3f} (iteration {evals[0]['iteration']}) -> "
              f"{evals[-1]['eval/overall']:.3f} (iteration {evals[-1]['iteration']}); run: {cfg.train.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

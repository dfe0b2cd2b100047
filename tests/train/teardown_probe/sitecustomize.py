"""On PYTHONPATH for the torchrun tests' processes: says on stderr when the interpreter
tears down while Gloo's worker threads still run (the window in which one can abort a
finished rank). A clean worker ends through ``unigrpo.train.distributed.exit_process``
and never gets here."""

import atexit
import os
import sys

MARK = "teardown with gloo threads alive"


def _report():
    tasks = f"/proc/{os.getpid()}/task"
    if not os.path.isdir(tasks):  # not Linux: nothing to look at
        return
    names = []
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    gloo = sorted(n for n in names if "gloo" in n)
    if gloo:
        print(f"{MARK}: {gloo}", file=sys.stderr, flush=True)


atexit.register(_report)

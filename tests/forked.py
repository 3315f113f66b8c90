"""Run ``selfsup.cli.main`` in children forked from the test process.

A forked child starts with selfsup (and torch) already imported, so a command costs what
its work costs, not an interpreter start.  Each child captures its stdout and stderr, may
run a ``setup`` first (e.g. to make its writes fail), waits on an optional barrier so that
several start together, and reports ``{"code", "out", "err"}``; a child that dies (a
simulated kill -9) reports only its exit code, ``-signal``.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, Sequence

FORK = multiprocessing.get_context("fork")
PROGRESS = re.compile(r"^\s*[\w ]+:\s+\d+%\|")  # a tqdm bar line, e.g. "features:  33%|###  | 1/3"


def _child(args: Sequence[str], result: str, barrier, setup: Callable[[], None] | None) -> None:
    import torch

    from selfsup.cli import main

    out, err = io.StringIO(), io.StringIO()
    sys.stdout, sys.stderr = out, err
    torch.set_num_threads(1)
    try:
        if setup is not None:
            setup()
        if barrier is not None:
            barrier.wait(timeout=60)  # a sibling that died before it breaks the barrier, not the test
        code = main(list(args))
    except BaseException:  # a bug: its traceback is what the test reports
        code = "exception"
        err.write(traceback.format_exc())
    Path(result).write_text(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue()}))


def run_together(commands: Sequence[Sequence[str]], *, setup: Callable[[int], Callable[[], None] | None] | None = None,
                 timeout: float = 120) -> list[dict]:
    """Fork one child per command, release them at once, and return their results in order."""
    barrier = FORK.Barrier(len(commands)) if len(commands) > 1 else None
    with tempfile.TemporaryDirectory() as tmp:
        results = [Path(tmp) / f"{i}.json" for i in range(len(commands))]
        children = [FORK.Process(target=_child, args=(c, str(r), barrier, setup(i) if setup else None))
                    for i, (c, r) in enumerate(zip(commands, results))]
        for p in children:
            p.start()
        for p in children:
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join()
                raise AssertionError(f"a child hung: {commands[children.index(p)]}")
        return [json.loads(r.read_text()) if r.exists() else {"code": p.exitcode, "out": "", "err": ""}
                for p, r in zip(children, results)]  # killed by signal N: code -N


def run_forked(args: Sequence[str], setup: Callable[[], None] | None = None) -> dict:
    """One command in a forked child (see :func:`run_together`)."""
    return run_together([args], setup=lambda i: setup)[0]


def error_lines(err: str) -> list[str]:
    """The lines of ``err`` that are not progress bars."""
    return [line for line in err.splitlines() if line.strip() and not PROGRESS.match(line)]


def assert_one_line_error(result: dict, *needles: str) -> str:
    lines = error_lines(result["err"])
    assert result["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), result
    assert "Traceback" not in result["err"], result["err"]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def dead_pid() -> int:
    """The id of a process that has exited and been reaped."""
    p = FORK.Process(target=os._exit, args=(0,))
    p.start()
    p.join()
    return p.pid

"""A step's deliberate refusal of its input: one line `refused: <step>: <message>`, exit status 2, never a traceback.

A step that finds its input unusable (no image downloaded, too many anomalies, no example
written...) raises its own error class, which derives from StepRefusal. Its KFP component body
runs inside `with refusals("<step>"):` and its CLI returns `refuse("<step>", e)`: both print the
same line on stderr, which the local runner finds in the step's log (find_refusal) and names as
the run's cause. Any other exception is a bug and keeps its traceback, in the step's log.
"""
from __future__ import annotations

import contextlib
import re
import sys
from typing import Iterator, NamedTuple

EXIT_STATUS = 2  # a refusal, as argparse's bad flags: the input, not the code, is at fault
PREFIX = "refused: "
_LINE = re.compile(r"^refused: ([a-z][a-z0-9_-]*): (.+)$")


class StepRefusal(Exception):
    """A step refuses its input on purpose; the message says what was found and what to do."""


class Refusal(NamedTuple):
    step: str
    message: str


def refusal_line(step: str, error: BaseException | str) -> str:
    """`refused: <step>: <message>`, the message on one line (a step's log is read line by line)."""
    message = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return f"{PREFIX}{step}: {message or type(error).__name__}"


def refuse(step: str, error: BaseException | str) -> int:
    """Prints the refusal line on stderr and returns the exit status of a refusal: `return refuse("push", e)`."""
    sys.stdout.flush()  # the step's own lines first: the refusal line is the last it writes
    print(refusal_line(step, error), file=sys.stderr, flush=True)
    return EXIT_STATUS


@contextlib.contextmanager
def refusals(step: str) -> Iterator[None]:
    """Around a KFP component body: a StepRefusal ends the process with its one line and exit status 2.

    The KFP executor runs the component's function in its own process, so SystemExit ends the
    step there with no traceback; kfp.local and a cluster both see a failed task. Called inside
    the body (kfp.local rebuilds a component from its function's source, without decorators).
    """
    try:
        yield
    except StepRefusal as e:
        raise SystemExit(refuse(step, e)) from None


def find_refusal(log: str) -> Refusal | None:
    """The last refusal line of a step's output, or None when the step did not refuse (it crashed)."""
    for line in reversed(log.splitlines()):
        m = _LINE.match(line.strip())
        if m:
            return Refusal(m.group(1), m.group(2))
    return None

"""The daemon's children die with it, even when it is killed with SIGKILL (issue 22): a worker left
behind would hold its pages' leases and a GPU's memory, a device probe a GPU context.

    python -m ocrd.daemon.lifeline PARENT_PID MODULE [ARG ...]

ties this process to PARENT_PID, then runs MODULE as `python -m MODULE ARG ...` would. On Linux it
asks the kernel for SIGKILL when the parent dies (PR_SET_PDEATHSIG), which leaves two gaps that a
torture run of kill -9 found (2 of 20 kills left a child alive for a moment):
- The child sets it itself, after its interpreter started: a parent that died before that has
  already handed the child to init, and no signal ever comes. So after setting it the child
  compares getppid() with PARENT_PID, and exits at once when the parent is gone.
- It is armed here, first, before the module's imports: a worker takes seconds to import
  mlx-vlm, and set in its main() (as it was) a kill meanwhile left it running on till then.
(It fires when the *thread* that forked the child ends, not the process: the daemon starts its
children from threads that outlive them: the main thread, or the thread that waits for a probe.)
macOS has no PDEATHSIG: there the getppid() check is all, and the worker's heartbeat thread keeps
checking (worker.py).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

_PR_SET_PDEATHSIG = 1


def child_argv(module: str, *args: str, python: str | None = None) -> list[str]:
    """The command line that runs `module` (as `python -m module args`) tied to this process;
    `python` stands in for sys.executable (tests)."""
    return [python or sys.executable, "-m", __name__, str(os.getpid()), module, *args]


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when `parent_pid` dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:   # died before the line above: no signal will come
        os._exit(1)


def main(argv: list[str]) -> None:
    parent_pid, module, *args = argv[1:]
    die_with_parent(int(parent_pid))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv)

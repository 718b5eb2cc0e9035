"""Ctrl-C or SIGTERM while ``python -m mtrl.train`` starts: one line and a clean exit.

Until training takes over (it writes nothing to the run dir before then), SIGINT/SIGTERM print
``mtrl.train: interrupted (SIGINT) before training started; nothing was saved`` on stderr and
exit with status 128 + the signal number (130, 143), instead of a KeyboardInterrupt traceback
or a silent kill. The handler is installed by ``mtrl/__init__.py`` when the process is
``python -m mtrl.train`` (so it covers the torch/mujoco imports) and by ``mtrl.train.main``
otherwise; ``mtrl.train.train`` hands over to its own handler (checkpoint, then exit 0) before
its first write. Stdlib only: it runs before the slow imports.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

PAUSE_ENV = "MTRL_TEST_PAUSE_STARTUP"
"""Test hook: set to "imports" or "ready", startup says so on stderr and waits for a signal
there (before the package's torch import; after envs, agent and buffer are built)."""
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StartupSignals:
    """Turns SIGINT/SIGTERM into one stderr line and ``SystemExit(128 + signum)``.

    Attributes:
      previous: the handlers found at install, put back by ``release``.
    """

    def __init__(self) -> None:
        self.active = True
        self.previous: dict[int, Any] = {sig: signal.signal(sig, self._handle)
                                         for sig in _SIGNALS}

    def _handle(self, signum: int, frame: object) -> None:
        self.release()  # a second signal acts as usual (Ctrl-C twice kills at once)
        name = signal.Signals(signum).name
        print(f"mtrl.train: interrupted ({name}) before training started; nothing was saved",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)  # no traceback, even from inside an import

    def release(self) -> None:
        """Puts back the handlers found at install, unless released or handed over before."""
        if self.active:
            self.active = False
            for sig, old in self.previous.items():
                signal.signal(sig, old)

    def hand_over(self) -> dict[int, Any]:
        """Stops acting for a caller that installs its own handlers; returns ``previous``,
        which that caller puts back when it is done."""
        self.active = False
        return self.previous

    def reached(self, stage: str) -> None:
        """Test hook: when ``PAUSE_ENV`` names ``stage``, says so and waits for a signal."""
        if os.environ.get(PAUSE_ENV) == stage:
            print(f"mtrl.train: startup paused at {stage} ({PAUSE_ENV})", file=sys.stderr,
                  flush=True)
            signal.pause()


_installed: StartupSignals | None = None


def install() -> StartupSignals:
    """The active startup handler of this process, installed if there is none (main thread)."""
    global _installed
    if _installed is None or not _installed.active:
        _installed = StartupSignals()
    return _installed


def launched_as_cli() -> bool:
    """Whether this process is ``python [options] -m mtrl.train`` (and still locating it)."""
    argv = list(getattr(sys, "orig_argv", ()))
    return (sys.argv[:1] == ["-m"] and "-m" in argv
            and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["mtrl.train"])

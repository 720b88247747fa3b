"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2."""


class ResnetsError(Exception):
    """Base class: bad input from the user (unknown name, bad file, wrong option)."""


class CheckFailed(ResnetsError):
    """A check that ran on good input and failed (an export that differs from eager PyTorch, an accuracy gate):
    the CLI says so in one line and exits with code 1, not the 2 of bad usage."""


class Unreadable(CheckFailed):
    """An image that could not be read (explain's, similar's query): one line and exit code 1, as `predict` exits
    when any of its images could not be read; 2 stays for bad usage."""


class UnknownModelError(ResnetsError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OptionError(ResnetsError, TypeError):
    """An option a model cannot take, or a value it does not accept."""


class WeightsError(ResnetsError, ValueError):
    """A weights file that is missing, unreadable, unsafe or of another architecture."""


class Stopped(BaseException):
    """A run stopped by a signal a scheduler sends (SIGTERM, SIGUSR1; engine/preemption.py): like Ctrl-C's
    KeyboardInterrupt, not an Exception, so no handler of bad samples takes it for one. The CLI says its message in
    one line and exits with 128 + `signum`."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def printable(text: str) -> str:
    """Control characters (newlines, escape codes, bells) shown as escapes: one line, no terminal tricks. For any
    text that reaches a terminal and came from elsewhere (file and class names, decoders' messages)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

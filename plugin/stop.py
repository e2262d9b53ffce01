"""SIGTERM and SIGINT that come before a command's own loop runs (while the
probe loads, or kallsyms is read): kept, so that the loop, once it starts,
ends at once, and the counts made meanwhile still go out. Each loop installs
its own handlers and asks requested() as it starts."""
import signal

_requested = False


def catch():
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _request)


def _request(*_):
    global _requested
    _requested = True


def requested():
    return _requested

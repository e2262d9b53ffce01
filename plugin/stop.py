"""SIGTERM and SIGINT, for every command: one pair of handlers, installed
before the probe loads (seconds, reading kallsyms too), so a signal then is
kept, not lost. Each command's loop asks requested() or wait()s on it, ends
at once, and the counts made meanwhile still go out."""
import signal
import threading

_stopping = threading.Event()


def catch():
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: _stopping.set())


def requested():
    return _stopping.is_set()


def wait(seconds):
    """Sleeps for seconds, or less at a signal; True if one came."""
    return _stopping.wait(seconds)

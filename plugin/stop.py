"""SIGTERM, SIGINT and SIGHUP (the SSH session that ran it closed), for every
command: one handler, installed before the probe loads (seconds, reading
kallsyms too), so a signal then is kept, not lost. Each command's loop asks requested(), wait()s, or polls
fileno(), ends at once, and the counts made meanwhile still go out.

The handler only sets a flag and writes a byte to a pipe: a lock taken in a
handler (threading.Event.set) deadlocks when the signal lands while the main
thread holds it."""
import os
import select
import signal

_requested = False
_wake_read, _wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)


def catch():
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _request)


def _request(*_):
    global _requested
    _requested = True
    try:
        os.write(_wake_write, b"!")
    except BlockingIOError:  # the pipe full of earlier signals: readable already
        pass


def requested():
    return _requested


def fileno():
    """Readable once a signal came: for a poll() that must end at one."""
    return _wake_read


def wait(seconds):
    """Sleeps for seconds, or less at a signal; True if one came."""
    if not _requested:
        select.select([_wake_read], [], [], seconds)
    return _requested

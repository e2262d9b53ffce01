"""Lines for stderr with Telegraf's level prefixes (E! W! I! D!), flushed at once:
under inputs.execd, Telegraf reads them and logs them at that level. Where
stderr is systemd's journal (telegraf-tcpdrop.service), each line also
starts with its syslog priority (<3> ... <7>, sd-daemon(3)), which journald
takes and strips."""
import os
import sys

PRIORITIES = {"E!": 3, "W!": 4, "I!": 6, "D!": 7}


def error(message):
    _write("E!", message)


def warn(message):
    _write("W!", message)


def info(message):
    _write("I!", message)


def debug(message):
    _write("D!", message)


def to_journal(stream=None):
    """Whether stream (stderr) is the journal: systemd names its stream in
    JOURNAL_STREAM (device:inode), which children inherit with other stderrs."""
    try:
        device, inode = map(int, os.environ["JOURNAL_STREAM"].split(":"))
        found = os.fstat((stream or sys.stderr).fileno())
    except (KeyError, ValueError, OSError):
        return False
    return (found.st_dev, found.st_ino) == (device, inode)


def _write(prefix, message):
    priority = f"<{PRIORITIES[prefix]}>" if JOURNAL else ""
    try:
        print(f"{priority}{prefix} {message}", file=sys.stderr, flush=True)
    except OSError:  # a terminal hung up (the SIGHUP being handled): no one to tell
        pass


JOURNAL = to_journal()

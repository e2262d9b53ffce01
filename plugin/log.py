"""Lines for stderr with Telegraf's level prefixes (E! W! I! D!), flushed at once:
under inputs.execd, Telegraf reads them and logs them at that level."""
import sys


def error(message):
    _write("E!", message)


def warn(message):
    _write("W!", message)


def info(message):
    _write("I!", message)


def debug(message):
    _write("D!", message)


def _write(prefix, message):
    print(f"{prefix} {message}", file=sys.stderr, flush=True)

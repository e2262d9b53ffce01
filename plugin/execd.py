"""When to emit, as Telegraf's inputs.execd expects of a long-running input.

- signal "none": a batch every interval; signal "STDIN": a batch for each
  line Telegraf writes to our stdin (on each of its own intervals).
- stdin closed (Telegraf stopping: it closes stdin, SIGTERM 5 s later,
  SIGKILL 5 s after that): emit what is pending and exit 0 at once.
  Only a pipe is watched: a terminal or /dev/null on stdin is not Telegraf.
- SIGTERM, SIGINT: emit what is pending, exit 0.
"""
import os
import select
import stat
import time

from . import stop

SIGNALS = ("none", "STDIN")


class Execd:
    def __init__(self, collect, output, interval, signal_mode="none", events=None, stdin_fd=0,
                 written=lambda: None):
        """collect() -> points, and written() once they are out; events: the
        probe, if it sends events (--stacks)."""
        self.collect, self.output, self.interval, self.written = collect, output, interval, written
        self.signal_mode, self.events, self.stdin_fd = signal_mode, events, stdin_fd
        self._stdin_closed = False

    def _watch_stdin(self):
        return self.signal_mode == "STDIN" or stat.S_ISFIFO(os.fstat(self.stdin_fd).st_mode)

    def run(self):
        # A signal must end the wait: Python retries an interrupted poll().
        poller = select.poll()
        poller.register(stop.fileno(), select.POLLIN)
        if self._watch_stdin():
            poller.register(self.stdin_fd, select.POLLIN)
        if self.events:
            poller.register(self.events.events_fd(), select.POLLIN)
        next_emit = time.monotonic() + self.interval
        try:
            while not (self._stdin_closed or stop.requested()):
                wait = None  # STDIN: until a line, a signal or an event
                if self.signal_mode == "none":
                    wait = max(0.0, next_emit - time.monotonic()) * 1000
                for fd, _ in poller.poll(wait):
                    if fd == stop.fileno():
                        break  # the loop's condition ends it
                    if fd == self.stdin_fd:
                        lines = os.read(fd, 4096)
                        if not lines:  # EOF: Telegraf is stopping
                            self._stdin_closed = True
                        elif self.signal_mode == "STDIN" and b"\n" in lines:
                            self._emit()
                    else:
                        self.events.poll(0)
                if self.signal_mode == "none" and time.monotonic() >= next_emit:
                    self._emit()
                    next_emit += self.interval
                    if next_emit < time.monotonic():  # fell behind (suspend): skip, don't burst
                        next_emit = time.monotonic() + self.interval
            self._emit()
        finally:
            self.output.close()

    def _emit(self):
        self.output.write(self.collect())
        self.written()

"""Line protocol on stdout, for Telegraf's inputs.execd (data_format = "influx")."""
import sys

from .emit import encode

WRITE_SLICE = 1000  # points encoded per write


class StdoutOutput:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    @classmethod
    def from_args(cls, _args):
        return cls()

    def write(self, points):
        if not points:
            return
        # In slices: the text of 10,000 points at once is megabytes held at the peak.
        for start in range(0, len(points), WRITE_SLICE):
            self.stream.write("\n".join(map(encode, points[start:start + WRITE_SLICE])) + "\n")
        self.stream.flush()

    def health(self):
        return {}

    def close(self):
        pass

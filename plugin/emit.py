"""Where each interval's points go, and the line protocol they are written in.

An output takes a batch of Points (`write`) and is closed once (`close`).
stdout is the Telegraf inputs.execd mode: line protocol, one flush per batch.
"""
import sys
from typing import NamedTuple


class Point(NamedTuple):
    measurement: str
    tags: dict
    fields: dict
    time_ns: int


def _escaper(specials):
    """Backslash before each special character; a line break (which line
    protocol cannot carry) becomes a space, itself escaped where special."""
    table = {c: "\\" + c for c in specials}
    table["\n"] = table["\r"] = table.get(" ", " ")
    table = str.maketrans(table)
    return lambda text: text.translate(table)


# https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/#special-characters
# A backslash is escaped in string field values only: elsewhere parsers keep it as is.
_measurement = _escaper(", ")
_key = _escaper(",= ")  # tag keys, tag values, field keys
_string = _escaper('\\"')


def _field_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return f'"{_string(str(value))}"'


def encode(point):
    """One line of line protocol, tags sorted by key; empty tag values are left
    out (line protocol has no empty tag)."""
    tags = "".join(f",{_key(k)}={_key(v)}" for k, v in sorted(point.tags.items()) if v != "")
    fields = ",".join(f"{_key(k)}={_field_value(v)}" for k, v in point.fields.items())
    return f"{_measurement(point.measurement)}{tags} {fields} {point.time_ns}"


class StdoutOutput:
    """Line protocol on stdout, for Telegraf's inputs.execd (data_format = "influx")."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def write(self, points):
        if points:
            self.stream.write("".join(encode(p) + "\n" for p in points))
            self.stream.flush()

    def close(self):
        pass

"""The outputs `metrics --output` can write to: one module each, which only
sends (emit.py has what they share). A new output is a module with a class
that has from_args(args), write(points), health() and close(), and one line
here; its options go in cli.py's "outputs" group, their defaults here."""
import importlib

TOKEN_ENV = "INFLUX_TOKEN"
DEFAULT_MAX_BUFFERED = 50000  # points kept while InfluxDB is away
STATSD_TAG_STYLES = ("influx", "dogstatsd", "none")

OUTPUTS = {  # --output NAME: (module, class)
    "stdout": ("stdout_output", "StdoutOutput"),
    "influxdb": ("influx_output", "InfluxOutput"),
    "statsd": ("statsd_output", "StatsdOutput"),
}


def make_output(args):
    """The output --output names, made from its options; errors.UsageError if they
    cannot work. Its module is imported only when chosen: the InfluxDB client's
    imports are not stdout's."""
    module, name = OUTPUTS[args.output]
    return getattr(importlib.import_module(f".{module}", __package__), name).from_args(args)

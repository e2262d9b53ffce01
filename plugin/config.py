"""The TOML config file (--config): every option of a command, under the
option's long name with '_' for '-' (`interval = "10s"`, `port_tags = "all"`,
`reason = ["NO_SOCKET"]`). Values are checked as the command line checks
them, before anything starts; options on the command line win.
"""
import argparse
import os
import stat
import tomllib


class ConfigError(Exception):
    pass


MAX_BYTES = 1 << 20  # a config is a few lines: more is not one


def load(path, parser):
    """{dest: value} for parser.set_defaults(), from the TOML file at path."""
    try:
        # O_NONBLOCK: opening a FIFO waits for a writer otherwise.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"config {path}: not a regular file")
            text = f.read(MAX_BYTES + 1)
        if len(text) > MAX_BYTES:
            raise ConfigError(f"config {path}: larger than {MAX_BYTES >> 20} MiB, which no "
                              "config is")
        table = tomllib.loads(text.decode())
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path}: not valid TOML: {e}") from None
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in
               ("help", "config")}
    values = {}
    for key, value in table.items():
        action = actions.get(key)
        if action is None:
            raise ConfigError(f"config {path}: unknown key {key!r} (the keys are: "
                              f"{', '.join(sorted(actions))})")
        try:
            values[key] = _convert(action, value)
        except (argparse.ArgumentTypeError, ValueError) as e:
            raise ConfigError(f"config {path}: key {key!r}: {e}") from None
    return values


def _convert(action, value):
    """value as the command line would have made it for this option."""
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value
    if isinstance(action, argparse._StoreConstAction):  # -4 / -6: family = 4 or 6
        if value not in (4, 6):
            raise ValueError(f"{value!r} is not 4 or 6")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_scalar(action, item) for item in items]
    return _scalar(action, value)


def _scalar(action, value):
    if isinstance(value, (dict, list, bool)):
        raise ValueError(f"{value!r} is not a single value")
    converted = action.type(str(value)) if action.type else str(value)
    if action.choices and converted not in action.choices:
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, action.choices))}")
    return converted

"""The TOML config file (--config): every option of a command, under the
option's long name with '_' for '-' (`interval = "10s"`, `port_tags = "all"`,
`reason = ["NO_SOCKET"]`). Values are checked as the command line checks
them, before anything starts; options on the command line win.
"""
import argparse
import tomllib


class ConfigError(Exception):
    pass


def load(path, parser):
    """{dest: value} for parser.set_defaults(), from the TOML file at path."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
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

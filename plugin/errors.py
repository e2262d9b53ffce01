"""The two ways a command fails before its work starts: cli.main turns each
into one `E! ` line and its exit code."""


class StartupError(Exception):
    """The host cannot run the probe as asked: exit 1."""


class UsageError(Exception):
    """A bad option or config value found after parsing: exit 2, like argparse's."""

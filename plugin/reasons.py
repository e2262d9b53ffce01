"""`telegraf-tcpdrop reasons`: the drop reasons of the running kernel, by number."""
from . import host
from .errors import StartupError


def run(_args):
    reasons = host.drop_reasons(host.libbpf())
    if not reasons.names:
        raise StartupError("this kernel reports no drop reasons (they came in Linux 5.17): "
                           "drops show as UNKNOWN, with their drop site")
    for value, name in sorted(reasons.names.items()):
        print(f"{value:>6} {name}")
    return 0

"""InfluxDB's v2 write API through influxdb-client: InfluxDB 2.x, 3.x and
Cloud, and 1.8+ (token "user:password", bucket "database/retention-policy").
Keeps what it could not deliver, within a bound, and delivers it when the
server is back."""
import logging
import os
import time

from . import log
from .errors import UsageError
from .emit import Backoff, Gauge, PointBuffer, encode, retry_after_seconds
from .outputs import TOKEN_ENV


# The token as a systemd credential (LoadCredential=influx-token:PATH):
# systemd reads PATH as root, and gives the service's user its copy.
CREDENTIAL = "influx-token"


def influx_token(args):
    """From --influx-token-file, else $INFLUX_TOKEN, else the systemd
    credential: never from the command line."""
    if args.influx_token_file:
        return _token_file(args.influx_token_file)
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and os.path.exists(os.path.join(credentials, CREDENTIAL)):
        return _token_file(os.path.join(credentials, CREDENTIAL))
    raise UsageError(f"no InfluxDB token: set {TOKEN_ENV} or --influx-token-file, or give the "
                     f"service LoadCredential={CREDENTIAL}:PATH (on InfluxDB 1.8: USER:PASSWORD)")


def _token_file(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode().strip()
    except PermissionError:
        raise UsageError(f"cannot read the InfluxDB token file {path}: permission denied (a "
                         "systemd service's own user cannot read a root-only file: give it as "
                         f"LoadCredential={CREDENTIAL}:{path} instead)") from None
    except OSError as e:
        raise UsageError(f"cannot read the InfluxDB token file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"the InfluxDB token file {path} is not UTF-8 text ({e.reason} at byte "
                         f"{e.start}): write the token alone in it") from None


class InfluxOutput:
    """Nothing is lost while the server is away: points stay in a PointBuffer and
    go out, oldest first, at the next interval the backoff allows.
    """

    CHUNK = 5000  # points per request
    # Client errors that a later retry can fix on the server's side (a token
    # or bucket created, rights granted): the points are kept.
    FIXABLE = {401: "the token is not valid (INFLUX_TOKEN or --influx-token-file)",
               403: "the token may not write to this bucket",
               404: "no such bucket or organization (--influx-bucket, --influx-org)"}

    def __init__(self, url, org, bucket, token, max_points, write_api=None, clock=time.monotonic):
        self.bucket, self.org = bucket, org
        self.buffer = PointBuffer(max_points)
        self.backoff = Backoff(clock=clock)
        self.write_errors = self.rejected = 0
        self._reported = {"merged": 0, "dropped": 0, "write_errors": 0, "rejected": 0}
        self._problem = None  # what the last E!/W! line said, so it is said once
        self._client = None
        if write_api is None:
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS
            logging.getLogger("influxdb_client").setLevel(logging.CRITICAL)  # we report
            self._client = InfluxDBClient(url=url, token=token, org=org, enable_gzip=True,
                                          timeout=10_000)
            write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._write_api = write_api

    @classmethod
    def from_args(cls, args):
        if not args.influx_bucket:
            raise UsageError("--output influxdb needs --influx-bucket (on 1.8: DATABASE/RP)")
        return cls(args.influx_url, args.influx_org, args.influx_bucket, influx_token(args),
                   args.max_buffered_points)

    def write(self, points):
        dropped = self.buffer.dropped
        self.buffer.add(points)
        if self.buffer.dropped > dropped:
            log.warn(f"InfluxDB output: {self.buffer.dropped - dropped} points dropped, the "
                     f"buffer full ({self.buffer.max_points} points, --max-buffered-points) "
                     "while the server does not take them")
        if self.backoff.ready():
            self.flush()

    def flush(self):
        """Sends what is buffered, oldest first, until done or the server fails."""
        buffered, rejected = len(self.buffer), self.rejected
        while len(self.buffer):
            if not self._send(min(self.CHUNK, len(self.buffer))):
                return
        if self.backoff.failures:  # back from failing (a refusal is no failure)
            delivered = buffered - (self.rejected - rejected)
            log.info(f"InfluxDB takes writes again: {delivered} buffered points delivered")
            self._problem = None
        self.backoff.succeeded()

    def _send(self, n):
        """Sends the n oldest points. True when they are done with (written, or
        refused for good) and out of the buffer; False when kept for a retry."""
        from influxdb_client.rest import ApiException
        try:
            self._write_api.write(bucket=self.bucket, org=self.org,
                                  record=[encode(p) for p in self.buffer.first(n)],
                                  write_precision="ns")
        except ApiException as e:
            status, headers = e.status, e.headers or {}
            self.write_errors += 1
            if status in (400, 413, 422) and n > 1:
                # Too large, or a point in it refused (2.x refuses the whole
                # request for one bad line; 1.x writes the rest and says
                # "partial write"): each half on its own, down to the bad
                # points alone; a point written twice is the same point.
                return self._send(n // 2) and self._send(n - n // 2)
            if status in (400, 413, 422):
                # The point itself is refused (e.g. a field type conflict, a point
                # too large alone): retrying cannot help.
                self.rejected += n
                self._say(log.error, f"InfluxDB rejected {n} point{'s' * (n > 1)} ({status}): "
                                     f"{_body(e)}")
                self.buffer.remove_first(n)
                return True
            if status in self.FIXABLE:
                self._say(log.error, f"InfluxDB answered {status}: {self.FIXABLE[status]}; "
                                     "keeping the points and retrying every few minutes")
                self.backoff.failed(floor=60.0)
                return False
            if status in (408, 429) or status >= 500:
                self._say(log.warn, f"InfluxDB answered {status}: keeping the points, retrying")
                self.backoff.failed(retry_after_seconds(headers.get("Retry-After")))
                return False
            self._say(log.error, f"InfluxDB answered {status}: {_body(e)}")
            self.backoff.failed(floor=60.0)
            return False
        except Exception as e:  # no answer: refused, reset, timed out, DNS...
            self.write_errors += 1
            self._say(log.warn, f"InfluxDB unreachable ({_reason(e)}): keeping the points, retrying")
            self.backoff.failed()
            return False
        self.buffer.remove_first(n)
        return True

    def _say(self, level, message):
        kind = message.split(":")[0]
        if kind != self._problem:
            level(message)
            self._problem = kind

    def health(self):
        now = {"merged": self.buffer.merged, "dropped": self.buffer.dropped,
               "write_errors": self.write_errors, "rejected": self.rejected}
        delta = {k: now[k] - self._reported[k] for k in now}
        self._reported = now
        return {"buffered_points": Gauge(len(self.buffer)), "merged_points": delta["merged"],
                "dropped_points": delta["dropped"], "rejected_points": delta["rejected"],
                "write_errors": delta["write_errors"]}

    def close(self):
        self.flush()
        lost = len(self.buffer) + self.buffer.dropped + self.rejected
        if lost:
            log.error(f"{lost} points not delivered to InfluxDB: {len(self.buffer)} still buffered "
                      f"at exit, {self.buffer.dropped} dropped from a full buffer, "
                      f"{self.rejected} refused by the server")
        if self._client:
            self._client.close()


def _body(error):
    body = error.body.decode(errors="replace") if isinstance(error.body, bytes) else error.body
    return (body or error.reason or "").strip()


def _reason(error):
    """The innermost cause of a connection error, in a few words."""
    while getattr(error, "reason", None) is not None and isinstance(error.reason, Exception):
        error = error.reason
    return str(error).split(": ")[-1] or type(error).__name__

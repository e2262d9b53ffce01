"""Docker's container names, from its API on its Unix socket (root's and the
docker group's). A module of its own, imported only where a Docker
container is found: http.client costs the monitor ~6 MiB."""
import http.client
import json
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket, as Docker's API is served."""

    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def container_names(path, timeout):
    """{container id: name} of the running containers; {} if the API cannot be asked."""
    api = UnixHTTPConnection(path, timeout)
    try:
        api.request("GET", "/containers/json")
        answer = api.getresponse()
        containers = json.loads(answer.read()) if answer.status == 200 else []
    except (OSError, http.client.HTTPException, ValueError):
        return {}
    finally:
        api.close()
    return {c["Id"]: c["Names"][0].lstrip("/") for c in containers
            if isinstance(c, dict) and isinstance(c.get("Id"), str)
            and isinstance(c.get("Names"), list) and c["Names"] and isinstance(c["Names"][0], str)}

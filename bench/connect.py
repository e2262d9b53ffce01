"""Connections to HOST PORT, one after another, each accepted by the listener
there and closed: the non-drop path that the listen-queue hooks also run on.

    python connect.py HOST PORT COUNT      prints `sent=COUNT seconds=S`
"""
import socket
import sys
import time

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
started = time.monotonic()
for _ in range(count):
    socket.create_connection((host, port)).close()
print(f"sent={count} seconds={time.monotonic() - started:.6f}")

"""One guest connection to the registry, relayed: QEMU's user network runs this for every TCP connection
the guest opens to the forwarded address (``guestfwd=...-cmd:``: libslirp starts the command per
connection with the connection as its stdin and stdout), and it joins that to a new connection to
``127.0.0.1:PORT``. ``guestfwd=...-tcp:HOST:PORT`` would not do: that is one character device for every
guest connection, so a second connection's bytes (a TLS ClientHello) arrive inside the first's stream.

Usage: guestfwd_relay.py PORT. Loopback only; ends when either side closes.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys


def main() -> int:
    port = int(sys.argv[1])
    up = socket.create_connection(("127.0.0.1", port), timeout=30)
    up.settimeout(None)
    guest_in, guest_out = sys.stdin.fileno(), sys.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(guest_in, selectors.EVENT_READ, "guest")
    sel.register(up, selectors.EVENT_READ, "registry")
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "guest":
                    data = os.read(guest_in, 65536)
                    if not data:
                        return 0
                    up.sendall(data)
                else:
                    data = up.recv(65536)
                    if not data:
                        return 0
                    view = memoryview(data)
                    while view:
                        view = view[os.write(guest_out, view) :]
    except OSError:
        return 0
    finally:
        up.close()


if __name__ == "__main__":
    sys.exit(main())

"""Prints N free TCP ports on 127.0.0.1, space-separated (default 2).

The sockets are bound at once and closed together, so the ports differ from each other.
"""

import socket
import sys


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    print(*(s.getsockname()[1] for s in socks))
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()

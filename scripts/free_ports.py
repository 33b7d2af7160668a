"""Prints N free loopback TCP ports for the test servers, separated by spaces.

All N are different and none is 10000 from another (SeaweedFS derives a gRPC port as its HTTP port + 10000 where
none is given). Each is held bound while the others are chosen, so one call never hands out a port twice. They come
from 20000-29999, below the kernel's ephemeral range, so no outgoing connection or port-0 bind takes one between the
choice and the server's own bind; the Swift tests take theirs from 10000-19999 (`freeLoopbackPort`), so the two
never meet either. A server can still lose a port to an unrelated program: test-services.sh then starts it again on
new ones.

To show that retry, `FREE_PORTS_TAKEN_ONCE=FILE`, FILE holding "N PORT", makes the next call for N ports hand out
PORT first without checking it (a listener the caller holds there stands for the program that won the race), and
removes FILE.
"""

import os
import random
import socket
import sys

FIRST, END = 20000, 30000


def main() -> int:
    wanted = int(sys.argv[1])
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        ephemeral_low = int(ranges.read().split()[0])
    end = min(END, ephemeral_low)
    candidates = list(range(FIRST, end))
    random.shuffle(candidates)
    chosen: list[int] = []
    held: list[socket.socket] = []
    taken = os.environ.get("FREE_PORTS_TAKEN_ONCE")
    if taken and os.path.exists(taken):
        with open(taken) as f:
            count, port = map(int, f.read().split())
        if count == wanted:
            chosen.append(port)
            os.remove(taken)
    for port in candidates:
        if len(chosen) >= wanted:
            break
        if any(abs(port - other) in (0, 10000) for other in chosen):
            continue
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        held.append(sock)
        chosen.append(port)
    if len(chosen) >= wanted:
        print(" ".join(map(str, chosen)))
        return 0
    print(f"free_ports.py: fewer than {wanted} free loopback ports in {FIRST}-{end - 1}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

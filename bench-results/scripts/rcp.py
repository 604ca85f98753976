#!/usr/bin/env python3
"""One RCP request from a bench script: HELLO, then OP with PARAMS (JSON,
default {}), on a fresh connection to 127.0.0.1:PORT; prints the OP's
response (the whole JSON object: result or error) on one line. Gives up
after RCP_TIMEOUT_S seconds without an answer (default 600: a COMPACT of
a large shard takes seconds).

    [RCP_TIMEOUT_S=5] python3 bench-results/scripts/rcp.py PORT OP ['{"key": "value"}']
"""
import json
import os
import socket
import struct
import sys

HEADER_BYTES = 18
TIMEOUT_S = float(os.environ.get("RCP_TIMEOUT_S", "600"))


def frame(payload: bytes) -> bytes:
    # Magic, version 1, no flags (so no CRC), header extension 0, length, CRC 0.
    return b"RCPX" + struct.pack(">HHHII", 1, 0, 0, len(payload), 0) + payload


def main() -> None:
    port, op = int(sys.argv[1]), sys.argv[2]
    params = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    hello = {"type": "request", "id": "0", "op": "HELLO", "params": {"protocol_version": 1}}
    request = {"type": "request", "id": "1", "op": op, "params": params}
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    s.sendall(frame(json.dumps(hello).encode()) + frame(json.dumps(request).encode()))
    buf, answers = b"", []
    while len(answers) < 2:
        chunk = s.recv(1 << 16)
        if not chunk:
            sys.exit(f"rcp.py: connection closed after {len(answers)} answers")
        buf += chunk
        while len(buf) >= HEADER_BYTES:
            n = struct.unpack(">I", buf[10:14])[0]
            if len(buf) < HEADER_BYTES + n:
                break
            answers.append(json.loads(buf[HEADER_BYTES:HEADER_BYTES + n]))
            buf = buf[HEADER_BYTES + n:]
    print(json.dumps(answers[1]))


if __name__ == "__main__":
    main()

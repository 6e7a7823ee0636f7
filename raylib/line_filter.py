"""Copy standard input to standard output byte for byte, less the lines of Ray's C++ log format
(`[2026-12-06 19:28:04,318 E 26289 26289] core_worker.cc:2465: ...`) that contain one of the
arguments.

Run as a program of its own (`python -S line_filter.py TEXT...`, nothing imported beyond the
standard library): raylib.ray_compat.drop_native_lines puts it between a job's fd 2 and its real
stderr. Everything else passes through as soon as it is read, partial lines included (progress
bars redraw with \\r and no newline); only a tail that may still become such a line is held until
its newline. It ends at end of input, so it outlives a crash of the process it serves and prints
all that process wrote.
"""

import os
import re
import sys

LINE = re.compile(rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z] \d+ \d+\] [^\n]*\n")
START = b"[0000-00-00 00:00:00,000 "  # 0: a digit; a tail that matches this much may be such a line
HOLD_MAX = 1 << 16  # a held tail longer than this passes on


def may_start_line(tail: bytes) -> bool:
    """Could tail (no newline in it) be the start of a line of Ray's C++ log format?"""
    return all(t == c or (t == 0x30 and 0x30 <= c <= 0x39) for t, c in zip(START, tail))


def held_from(buf: bytes) -> int:
    """Where buf's tail to hold starts: the first '[' after its last newline that may start a
    native line (len(buf) when there is none)."""
    at = buf.find(b"[", buf.rfind(b"\n") + 1)
    while at != -1 and len(buf) - at <= HOLD_MAX:
        if may_start_line(buf[at:]):
            return at
        at = buf.find(b"[", at + 1)
    return len(buf)


def write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def main(texts: list[bytes]) -> int:
    def keep(m: re.Match) -> bytes:
        return b"" if any(t in m.group(0) for t in texts) else m.group(0)

    held = b""
    while True:
        try:
            chunk = os.read(0, 1 << 16)
        except InterruptedError:
            continue
        if not chunk:
            break
        buf = held + chunk
        cut = held_from(buf)
        write(1, LINE.sub(keep, buf[:cut]))
        held = buf[cut:]
    write(1, held)
    return 0


if __name__ == "__main__":
    sys.exit(main([a.encode() for a in sys.argv[1:]]))

"""protocol/ is sans-I/O: importing it (and its modules outside __init__, such as the
heartbeat datagram) must not pull in asyncio or socket."""

import subprocess
import sys


def test_protocol_imports_no_io_modules() -> None:
    code = (
        "import sys, protocol, protocol.heartbeat, protocol.tlsmode\n"
        "bad = sorted(m for m in ('asyncio', 'socket', 'selectors', 'ssl') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"protocol imported I/O modules: {out}"

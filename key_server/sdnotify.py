"""systemd's notify protocol (sd_notify(3)): READY=1, WATCHDOG=1, STOPPING=1 and STATUS= over $NOTIFY_SOCKET.

Written here rather than taken from a library: the protocol is one datagram per message on a Unix socket
(`man sd_notify`, "Notes"), the pure-Python `sdnotify` package has not been released since 2017 and does not
handle abstract ('@') socket names, and `systemd-python` needs libsystemd headers and a compiler on the Pi.

The watchdog ping is an asyncio task on the server's own event loop (`watchdog()`), never a thread: if the loop
hangs (a blocking call, a deadlock, SIGSTOP), the pings stop and systemd kills and restarts the service after
WatchdogSec=, which is the point of the unit's `Type=notify` + `WatchdogSec=`.
Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from typing import Final

__all__ = ["Notifier", "watchdog"]

log = logging.getLogger("key_server.sdnotify")

# systemd recommends pinging at half the watchdog interval (sd_watchdog_enabled(3)); a little more often
# leaves room for a loop that is busy, not hung, for a moment.
PING_FRACTION: Final = 0.4


class Notifier:
    """Sends sd_notify messages to the socket systemd named in the environment; a no-op without one."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address: str | bytes | None = None
        if address:
            # "@name" is an abstract socket: its real name starts with a NUL byte (sd_notify(3)).
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval: float | None = watchdog_usec / 1e6 if watchdog_usec else None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> Notifier:
        """The notifier systemd set up for this process ($NOTIFY_SOCKET, $WATCHDOG_USEC, $WATCHDOG_PID)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name: not notifying systemd", address)
            address = None
        usec: int | None = None
        watchdog_pid = env.get("WATCHDOG_PID")
        # WATCHDOG_PID names the process the watchdog is meant for; a child that inherited it must not ping.
        if watchdog_pid is None or watchdog_pid == str(os.getpid() if pid is None else pid):
            try:
                usec = int(env.get("WATCHDOG_USEC", "0")) or None
            except ValueError:
                log.warning("WATCHDOG_USEC=%r is not a number: no watchdog pings", env.get("WATCHDOG_USEC"))
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given (the process runs under a Type=notify unit)."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send one message of VARIABLE=value lines; True if it was sent. Never raises: systemd may be gone."""
        if self._address is None:
            return False
        payload = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Non-blocking: a full socket buffer must not stall the event loop that sends the ping.
                sock.setblocking(False)
                sock.connect(self._address)
                sock.sendall(payload)
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", assignments, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        """Tell systemd the service is up (Type=notify: `systemctl start` returns now)."""
        return self.notify("READY=1", f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        """Tell systemd the service is shutting down of its own accord."""
        return self.notify("STOPPING=1", f"STATUS={status}")


async def watchdog(notifier: Notifier) -> None:
    """Ping systemd's watchdog from this event loop until cancelled; returns at once without a watchdog."""
    interval = notifier.watchdog_interval
    if interval is None or not notifier.enabled:
        return
    period = interval * PING_FRACTION
    log.debug("systemd watchdog: %.1f s, pinging every %.1f s", interval, period)
    while True:
        notifier.notify("WATCHDOG=1")
        await asyncio.sleep(period)

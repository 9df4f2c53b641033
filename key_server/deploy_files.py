"""The deployment files shipped inside the package (key_server/deploy/): `key-server print-file NAME` prints them."""

from __future__ import annotations

from importlib import resources
from typing import Final

__all__ = ["DEPLOY_FILES", "deploy_file"]

# name -> where docs/DEPLOY.md installs it; the files themselves live in key_server/deploy/ and nowhere else.
DEPLOY_FILES: Final = {
    "key-server.service": "/etc/systemd/system/key-server.service",
    "bluetooth-restart.conf": "/etc/systemd/system/bluetooth.service.d/restart.conf",
    "60-dkey-gpio.rules": "/etc/udev/rules.d/60-dkey-gpio.rules",
    "config.toml": "/etc/dkey/config.toml",
}


def deploy_file(name: str) -> str:
    """The text of one shipped deployment file; KeyError for a name not in DEPLOY_FILES."""
    if name not in DEPLOY_FILES:
        raise KeyError(name)
    return resources.files("key_server").joinpath("deploy", name).read_text(encoding="utf-8")

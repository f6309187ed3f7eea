"""Settings of the live server (``emote serve``): where it listens, what it holds, what it accepts.

One keyword-only frozen dataclass, built by the CLI from its options and handed to
:func:`server.app.create_app`. Every limit the server enforces lives here with the reason for its
default beside it, and :class:`ServerConfig` refuses values that make no sense with an
:class:`~model.errors.OptionError` that names the field.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from emote.model.errors import OptionError
from emote.model.motion.registry import DEFAULT_GENERATOR, check_generator_name

if TYPE_CHECKING:
    from emote.server.ice import IcePolicy

MIB = 1024 * 1024


def default_data_dir() -> Path:
    """``$EMOTE_DATA_DIR``, or ``~/.local/share/emote``: where uploaded portraits are kept."""
    return Path(os.environ.get("EMOTE_DATA_DIR") or Path.home() / ".local" / "share" / "emote")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """What one ``emote serve`` process listens on, serves and allows.

    Attributes:
        host: address to listen on; loopback by default so nothing is exposed by accident.
        port: TCP port for HTTP and WebSocket (0 = any free port).
        portrait: the default portrait (``None`` = the bundled one, ``model/assets/default_portrait.jpg``).
        max_sessions: concurrent avatar sessions; 2 is what the 2-core reference machine holds at
            25 fps, 512x512 with video encoding (BENCHMARKS.md). Beyond it, ``POST /offer`` answers 503.
        retry_after_s: the ``Retry-After`` a refused client is told to wait.
        max_upload_bytes: largest portrait upload accepted (413 beyond); 10 MiB covers any phone photo.
        max_say_chars: longest text for ``POST /sessions/{id}/say`` (about a minute of speech).
        max_concurrent_uploads: portrait uploads handled at once (each holds its body, up to
            ``max_upload_bytes``, and waits for a face analysis on the one preparation thread); more
            are refused with 503 and ``Retry-After``.
        max_stored_uploads: uploaded portraits kept on disk; beyond, the least recently uploaded is
            deleted (never the bundled default portrait). 200 photos are about 200 MB at most.
        ice_addresses: the only local addresses WebRTC media may use (see server/ice.py); loopback only
            by default, per ARCHITECTURE.md's networking rules. Add a LAN address to serve other machines.
        ice_remote_networks: networks (CIDR, e.g. ``"192.168.1.0/24"``) whose callers' ICE candidates
            and checks are accepted besides ``ice_addresses``; a LAN deployment names its LAN here, or
            callers on other machines are refused ("none of the offer's ICE candidates ..."). Empty by
            default: only this machine may call.
        data_dir: uploaded portraits go to ``data_dir / "portraits"``.
        fps: video frame rate of every session.
        size: side in pixels of the square video around the face.
        motion: the motion generator every session uses (``emote serve --motion NAME``).
        render_threads: worker threads shared by all sessions for motion and rendering; one per core.
        shutdown_timeout_s: how long a shutdown waits for open requests before cancelling them.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    portrait: Path | None = None
    max_sessions: int = 2
    retry_after_s: int = 10
    max_upload_bytes: int = 10 * MIB
    max_say_chars: int = 1000
    max_concurrent_uploads: int = 2
    max_stored_uploads: int = 200
    ice_addresses: tuple[str, ...] = ("127.0.0.1",)
    ice_remote_networks: tuple[str, ...] = ()
    data_dir: Path = field(default_factory=default_data_dir)
    fps: float = 25.0
    size: int = 512
    motion: str = DEFAULT_GENERATOR
    render_threads: int = 2
    shutdown_timeout_s: float = 3.0

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise OptionError(f"host must be an address or host name such as '127.0.0.1', got {self.host!r}")
        _check_int("port", self.port, 0, 65535)
        _check_int("max_sessions", self.max_sessions, 1, 64)
        _check_int("retry_after_s", self.retry_after_s, 1, 3600)
        _check_int("max_upload_bytes", self.max_upload_bytes, 1024, 200 * MIB)
        _check_int("max_say_chars", self.max_say_chars, 1, 100_000)
        _check_int("max_concurrent_uploads", self.max_concurrent_uploads, 1, 64)
        _check_int("max_stored_uploads", self.max_stored_uploads, 1, 100_000)
        _check_int("size", self.size, 64, 2048)
        _check_int("render_threads", self.render_threads, 1, 64)
        check_generator_name(self.motion)
        if isinstance(self.fps, bool) or not isinstance(self.fps, int | float) or not 1 <= self.fps <= 60:
            raise OptionError(f"fps must be a number from 1 to 60, got {self.fps!r}")
        timeout = self.shutdown_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
            raise OptionError(f"shutdown_timeout_s must be a number of seconds in (0, 60], got {timeout!r}")
        if isinstance(self.ice_addresses, str) or not self.ice_addresses:
            raise OptionError(f"ice_addresses must be a non-empty tuple of IP addresses, got {self.ice_addresses!r}")
        for address in self.ice_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise OptionError(
                    f"ice_addresses: {address!r} is not an IP address; give addresses such as '127.0.0.1'"
                ) from None
        if isinstance(self.ice_remote_networks, str):
            raise OptionError(f"ice_remote_networks must be a tuple of networks in CIDR form such as "
                              f"'192.168.1.0/24', got the string {self.ice_remote_networks!r}")
        for network in self.ice_remote_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except (ValueError, TypeError):
                raise OptionError(f"ice_remote_networks: {network!r} is not a network; give CIDR networks such "
                                  "as '192.168.1.0/24'") from None
        if self.portrait is not None:
            object.__setattr__(self, "portrait", Path(self.portrait))
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "ice_addresses", tuple(self.ice_addresses))
        object.__setattr__(self, "ice_remote_networks", tuple(self.ice_remote_networks))

    def ice_policy(self) -> IcePolicy:
        """The ICE allow-list every call of this server runs under."""
        from emote.server.ice import IcePolicy

        return IcePolicy(allowed_addresses=self.ice_addresses, remote_networks=self.ice_remote_networks)

    @property
    def upload_dir(self) -> Path:
        """Folder of uploaded portraits."""
        return self.data_dir / "portraits"


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OptionError(f"{name} must be a whole number from {low} to {high}, got {value!r}")

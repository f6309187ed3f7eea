"""Which network addresses may carry a call's media: the ICE allow-list every peer connection runs under.

A WebRTC call finds its path with ICE: each side gathers candidate addresses, the two exchange them in SDP,
and each answers the other's STUN connectivity checks. Left alone, aiortc's ICE agent (aioice 0.13.0, pinned
in pyproject.toml because this module hooks its internals) gathers every interface except loopback and
answers checks on all of them, so a call between two processes on one machine goes out over the LAN
interface. :class:`IcePolicy` states which local addresses may be used and which remote addresses may be
talked to; :class:`IceGuard` enforces it on one ``RTCPeerConnection`` at four points: the host addresses
gathered (exactly the allowed ones, 127.0.0.1 included), incoming STUN checks from remote addresses off the
list (dropped unanswered), remote candidates (dropped, so no check is ever sent to them), and the candidate
lines of SDP in both directions. The hooks are per connection (bound on the aioice ``Connection`` objects
of that peer connection; nothing process-wide is patched). The guard also notes when the peer was last
heard from, which :mod:`server.webrtc` uses to notice a client that vanished without hanging up.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from aioice import Candidate, Connection, stun
from aioice.ice import StunProtocol
from aiortc import RTCConfiguration, RTCPeerConnection

from emote.model.errors import OptionError

logger = logging.getLogger(__name__)

_IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Marks an aioice Connection that already carries a guard's hooks (attach() is idempotent).
_HOOKED = "_emote_ice_guard"


def _parse_address(text: str) -> _IpAddress | None:
    """An IP address literal (an IPv6 zone suffix is ignored), or None for anything else (mDNS names)."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


@dataclass(frozen=True, kw_only=True)
class IcePolicy:
    """The addresses a call may use. The default keeps every call on loopback.

    Attributes:
        allowed_addresses: local IP addresses the server binds for media, and the remote addresses it
            talks to. 127.0.0.1 (the default) keeps calls on this machine; a LAN deployment lists the
            interface address that should carry media (wildcards are refused: name the interface).
        remote_networks: extra remote networks (CIDR, e.g. "192.168.1.0/24") whose candidates and checks
            are accepted; empty means remote peers must use one of ``allowed_addresses`` themselves.
    """

    allowed_addresses: tuple[str, ...] = ("127.0.0.1",)
    remote_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.allowed_addresses:
            raise OptionError("IcePolicy.allowed_addresses is empty: name at least one local address, e.g. 127.0.0.1")
        for text in self.allowed_addresses:
            address = _parse_address(text)
            if address is None or address.is_unspecified or address.is_multicast:
                raise OptionError(
                    f"IcePolicy.allowed_addresses holds {text!r}: give the IP address of one local interface "
                    "(e.g. 127.0.0.1), not a host name, wildcard or multicast address"
                )
        for text in self.remote_networks:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise OptionError(
                    f"IcePolicy.remote_networks holds {text!r}: give networks in CIDR form, e.g. 192.168.1.0/24"
                ) from None

    def host_addresses(self) -> list[str]:
        """The local addresses to gather host candidates on, in the order given."""
        return list(self.allowed_addresses)

    def allows_local(self, address: str) -> bool:
        """Whether ``address`` may be one of our own candidates."""
        parsed = _parse_address(address)
        return parsed is not None and parsed in self._allowed

    def allows_remote(self, address: str) -> bool:
        """Whether we may talk to (and answer) a peer at ``address``."""
        parsed = _parse_address(address)
        if parsed is None:
            return False
        return parsed in self._allowed or any(parsed in network for network in self._networks)

    def filter_remote_sdp(self, sdp: str) -> str:
        """``sdp`` (the peer's offer) without candidate lines whose address we may not talk to."""
        return _filter_candidates(sdp, self.allows_remote)

    def filter_local_sdp(self, sdp: str) -> str:
        """``sdp`` (our answer or offer) without candidate lines on addresses we may not use."""
        return _filter_candidates(sdp, self.allows_local)

    @cached_property
    def _allowed(self) -> frozenset[_IpAddress]:
        return frozenset(a for a in map(_parse_address, self.allowed_addresses) if a is not None)

    @cached_property
    def _networks(self) -> tuple[_IpNetwork, ...]:
        return tuple(ipaddress.ip_network(text, strict=False) for text in self.remote_networks)


def _filter_candidates(sdp: str, allowed: Callable[[str], bool]) -> str:
    """Drop ``a=candidate:`` lines whose connection address fails ``allowed``; keep everything else."""
    kept = []
    for line in sdp.splitlines(keepends=True):
        if line.startswith("a=candidate:"):
            # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
            fields = line.split()
            if len(fields) < 8 or not allowed(fields[4]):
                continue
        kept.append(line)
    return "".join(kept)


def rtc_configuration() -> RTCConfiguration:
    """The configuration every peer connection uses: no STUN or TURN server (aiortc's default is Google's)."""
    return RTCConfiguration(iceServers=[])


class IceGuard:
    """Enforces an :class:`IcePolicy` on the ICE agents of one ``RTCPeerConnection``.

    Call :meth:`attach` once the connection has all its transceivers (after ``setRemoteDescription`` and
    ``addTrack`` on the answering side, after ``addTransceiver`` on the offering side) and before
    ``setLocalDescription``, which gathers candidates. Attaching again is harmless.
    """

    def __init__(self, policy: IcePolicy) -> None:
        self.policy = policy
        self.dropped_checks = 0  # STUN requests from remote addresses off the list, left unanswered
        self.dropped_candidates = 0  # remote candidates off the list, never paired or checked
        self._last_heard_s: float | None = None

    def attach(self, pc: RTCPeerConnection) -> None:
        """Install the policy's hooks on every ICE agent ``pc`` has now.

        Raises:
            RuntimeError: an agent has already gathered candidates (attach came too late to choose them).
        """
        for connection in ice_connections(pc):
            if getattr(connection, _HOOKED, None) is self:
                continue
            if connection.local_candidates:
                raise RuntimeError("IceGuard.attach() must run before setLocalDescription() gathers candidates")
            self._hook(connection)

    def seconds_since_heard(self) -> float | None:
        """Seconds since the last datagram from the peer (media or STUN check), None before the first."""
        if self._last_heard_s is None:
            return None
        return time.monotonic() - self._last_heard_s

    def _hook(self, connection: Connection) -> None:
        # Each hook is an instance attribute shadowing the aioice method of the same name, so aioice's own
        # calls (self.get_component_candidates(...), self.receiver.request_received(...)) reach it.
        gather = connection.get_component_candidates
        answer_check = connection.request_received
        deliver = connection.data_received
        add_candidate = connection.add_remote_candidate

        async def get_component_candidates(component: int, addresses: list[str], **options: Any) -> list[Candidate]:
            # aioice enumerates the interfaces without loopback; the policy names the addresses instead.
            candidates = await gather(component=component, addresses=self.policy.host_addresses(), **options)
            if not candidates:
                logger.warning("no ICE candidate could be bound on %s", ", ".join(self.policy.allowed_addresses))
            return candidates

        def request_received(message: stun.Message, addr: tuple[str, int], protocol: StunProtocol) -> None:
            if not self.policy.allows_remote(addr[0]):
                self.dropped_checks += 1
                if self.dropped_checks == 1:
                    logger.warning("dropping ICE checks from %s: not on the ICE allow-list", addr[0])
                return
            self._last_heard_s = time.monotonic()
            answer_check(message, addr, protocol)

        def data_received(data: bytes, component: int) -> None:
            self._last_heard_s = time.monotonic()
            deliver(data, component)

        async def add_remote_candidate(candidate: Candidate | None) -> None:
            if candidate is not None and not self.policy.allows_remote(candidate.host):
                self.dropped_candidates += 1
                return
            await add_candidate(candidate)

        hooks: dict[str, object] = {
            "get_component_candidates": get_component_candidates,
            "request_received": request_received,
            "data_received": data_received,
            "add_remote_candidate": add_remote_candidate,
            _HOOKED: self,
        }
        for name, value in hooks.items():
            setattr(connection, name, value)


def ice_connections(pc: RTCPeerConnection) -> list[Connection]:
    """The aioice agents behind ``pc``'s transceivers and data-channel transport, each once."""
    dtls_transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls_transports.append(pc.sctp.transport)
    connections: list[Connection] = []
    for dtls in dtls_transports:
        # RTCIceGatherer keeps its aioice agent private; aiortc 1.16 / aioice 0.13 are pinned for this.
        connection = dtls.transport.iceGatherer._connection
        if all(connection is not seen for seen in connections):
            connections.append(connection)
    return connections

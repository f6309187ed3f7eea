"""The ICE allow-list keeps calls on the addresses it names: SDP filtering, gathering, and dropped checks.

Run inside a loopback-only namespace (``unshare -rn``): there 127.0.0.1 is the only configured address,
and 127.0.0.2 (routable on ``lo`` in Linux) plays a peer that is not on the list.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aioice.ice
import pytest
from aioice import Candidate, stun
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from bench.rtc_client import RtcClient
from emote.model.errors import OptionError
from emote.server.ice import IceGuard, IcePolicy, ice_connections, rtc_configuration

OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 192.168.1.20",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
        "a=candidate:2 1 udp 2130706431 192.168.1.20 50001 typ host",
        "a=candidate:3 1 udp 2130706431 6d1f2a9c-0b1e-4c34-9a55-8f0b7a2d1e3f.local 50002 typ host",
        "a=candidate:4 1 udp 1694498815 203.0.113.7 50003 typ srflx raddr 192.168.1.20 rport 50001",
        "a=candidate:5 1 udp 2130706431 ::1 50004 typ host",
        "a=candidate:6 1 udp",
        "a=end-of-candidates",
        "",
    ]
)


def candidate_addresses(sdp: str) -> list[str]:
    return [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")]


def test_policy_refuses_unusable_addresses() -> None:
    with pytest.raises(OptionError, match="allowed_addresses is empty"):
        IcePolicy(allowed_addresses=())
    for bad in ("0.0.0.0", "::", "localhost", "224.0.0.251"):
        with pytest.raises(OptionError, match=f"holds '{bad}'"):
            IcePolicy(allowed_addresses=(bad,))
    with pytest.raises(OptionError, match="remote_networks holds 'lan'"):
        IcePolicy(remote_networks=("lan",))


def test_sdp_keeps_only_candidates_on_the_list() -> None:
    policy = IcePolicy()
    filtered = policy.filter_remote_sdp(OFFER)
    assert candidate_addresses(filtered) == ["127.0.0.1"]
    # Everything but the dropped candidate lines is untouched, line endings included.
    kept = [line for line in OFFER.split("\r\n") if not line.startswith("a=candidate:") or "127.0.0.1" in line]
    assert filtered == "\r\n".join(kept)

    lan = IcePolicy(allowed_addresses=("127.0.0.1", "::1"), remote_networks=("192.168.1.0/24",))
    assert candidate_addresses(lan.filter_remote_sdp(OFFER)) == ["127.0.0.1", "192.168.1.20", "::1"]
    # Remote networks widen whom we talk to, never which of our own addresses we announce.
    assert candidate_addresses(lan.filter_local_sdp(OFFER)) == ["127.0.0.1", "::1"]


def test_configuration_names_no_stun_server() -> None:
    assert rtc_configuration().iceServers == []


@pytest.mark.asyncio
async def test_gathering_yields_exactly_the_allowed_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend this machine has a LAN interface (127.0.0.2 stands in for it: bindable, yet not loopback's
    # 127.0.0.1), which aioice enumerates while skipping 127.0.0.1.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.2"])
    pc = RTCPeerConnection(rtc_configuration())
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        assert candidate_addresses(pc.localDescription.sdp) == ["127.0.0.2"], "unguarded: the 'LAN' address only"
    finally:
        await pc.close()

    for allowed in (("127.0.0.1",), ("127.0.0.1", "127.0.0.2")):
        pc = RTCPeerConnection(rtc_configuration())
        try:
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="sendrecv")
            guard = IceGuard(IcePolicy(allowed_addresses=allowed))
            guard.attach(pc)
            guard.attach(pc)  # idempotent
            await pc.setLocalDescription(await pc.createOffer())
            # Bundled: both m= lines carry the first transport's candidates.
            assert candidate_addresses(pc.localDescription.sdp) == list(allowed) * 2
            with pytest.raises(RuntimeError, match="before setLocalDescription"):
                IceGuard(IcePolicy()).attach(pc)
        finally:
            await pc.close()


def binding_request(username: str, password: str) -> bytes:
    """A STUN Binding request as a controlled peer would send it, authenticated like a real check."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1853817087
    request.attributes["ICE-CONTROLLED"] = 1
    request.add_message_integrity(password.encode("utf8"))
    return bytes(request)


async def send_check(source: str, target: tuple[str, int], request: bytes, wait_s: float) -> bytes | None:
    """Send ``request`` from a socket bound to ``source``; the reply, or None if none came in ``wait_s``."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((source, 0))
        await loop.sock_sendto(sock, request, target)
        try:
            async with asyncio.timeout(wait_s):
                data, _ = await loop.sock_recvfrom(sock, 2048)
        except TimeoutError:
            return None
        return data


@pytest.mark.asyncio
async def test_checks_from_addresses_off_the_list_go_unanswered() -> None:
    for remote_networks, answered_from_off_list in (((), False), (("127.0.0.2/32",), True)):
        pc = RTCPeerConnection(rtc_configuration())
        try:
            pc.addTransceiver("video", direction="recvonly")
            guard = IceGuard(IcePolicy(remote_networks=remote_networks))
            guard.attach(pc)
            await pc.setLocalDescription(await pc.createOffer())
            (connection,) = ice_connections(pc)
            (local,) = connection.local_candidates
            request = binding_request(f"{connection.local_username}:peer", connection.local_password)

            # The same valid, authenticated check: answered from 127.0.0.1 (the request is good) ...
            reply = await send_check("127.0.0.1", (local.host, local.port), request, wait_s=2.0)
            assert reply is not None
            assert stun.parse_message(reply).message_class == stun.Class.RESPONSE
            assert guard.seconds_since_heard() is not None
            # ... and from 127.0.0.2 only when the policy lets that address in.
            reply = await send_check("127.0.0.2", (local.host, local.port), request, wait_s=0.3)
            assert (reply is not None) == answered_from_off_list
            assert guard.dropped_checks == (0 if answered_from_off_list else 1)
        finally:
            await pc.close()


@pytest.mark.asyncio
async def test_remote_candidates_off_the_list_are_never_paired() -> None:
    pc = RTCPeerConnection(rtc_configuration())
    try:
        pc.addTransceiver("video", direction="recvonly")
        guard = IceGuard(IcePolicy())
        guard.attach(pc)
        await pc.setLocalDescription(await pc.createOffer())
        (connection,) = ice_connections(pc)
        for host in ("192.168.1.20", "0b1e4c34.local", "127.0.0.1"):
            candidate = Candidate(
                foundation="1", component=1, transport="udp", priority=1, host=host, port=50000, type="host"
            )
            await connection.add_remote_candidate(candidate)
        assert [c.host for c in connection.remote_candidates] == ["127.0.0.1"]
        assert guard.dropped_candidates == 2
    finally:
        await pc.close()


@pytest.mark.asyncio
async def test_a_loopback_call_connects_with_loopback_candidates_only() -> None:
    server = RTCPeerConnection(rtc_configuration())
    server_guard = IceGuard(IcePolicy())
    client = RtcClient(send_audio=False)

    async def answer(sdp: str, kind: str) -> tuple[str, str]:
        offer = RTCSessionDescription(sdp=server_guard.policy.filter_remote_sdp(sdp), type=kind)
        await server.setRemoteDescription(offer)
        server.addTrack(VideoStreamTrack())  # takes the offer's video transceiver
        server_guard.attach(server)
        await server.setLocalDescription(await server.createAnswer())
        return server_guard.policy.filter_local_sdp(server.localDescription.sdp), server.localDescription.type

    try:
        started = time.monotonic()
        setup_s = await client.connect(answer, timeout_s=10)
        await client.wait_video(3, timeout_s=5)
        assert setup_s < 5 and time.monotonic() - started < 8
        assert set(candidate_addresses(client.offer_sdp)) == {"127.0.0.1"}
        assert set(candidate_addresses(client.answer_sdp)) == {"127.0.0.1"}
        assert client.images().shape[1:] == (480, 640, 3)
        assert server_guard.dropped_checks == client.guard.dropped_checks == 0
    finally:
        await client.close()
        await server.close()

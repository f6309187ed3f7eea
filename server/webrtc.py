"""One caller's WebRTC connection to an avatar: answers the offer, sends video and voice, hears the microphone.

:class:`AvatarPeer` is the server end of a call. Given a browser's (or any peer's) SDP offer it builds an
aiortc ``RTCPeerConnection`` under the ICE allow-list of :mod:`server.ice` (no STUN server, loopback by
default), attaches the session's :class:`~server.tracks.AvatarVideoTrack` and
:class:`~server.tracks.AvatarAudioTrack`, and feeds any audio the caller sends to
``session.push_microphone`` (the lips follow a live voice). It never receives video: a caller that offers
its camera gets the avatar's video section answered ``sendonly``, so no frame of it is sent or decoded. It
answers once ICE gathering is complete (no trickle), so the answer carries its candidates.

A call ends one of four ways, and each releases the connection's tasks, tracks and sockets and calls
``on_closed`` exactly once: :meth:`AvatarPeer.close` (the server hangs up), the caller hanging up
(DTLS close: the connection state becomes ``closed``), ICE or DTLS failing, or a caller that vanished
without a word. aiortc notices the last only after its consent checks fail for about 30 s, so the peer
also watches the time since the caller was last heard (media, RTCP or STUN; a live browser is heard
several times a second) and hangs up after ``silence_timeout_s``. The peer does not own the session:
whoever made the session closes it after the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError

from emote.server.errors import SignalingError
from emote.server.ice import IceGuard, IcePolicy, rtc_configuration
from emote.server.tracks import AvatarAudioTrack, AvatarVideoTrack
from emote.streaming.session import AvatarSession

logger = logging.getLogger(__name__)

MAX_SDP_CHARS = 100_000  # browser offers are 3-10 kB; anything far larger is not an offer
_RECEIVING = ("recvonly", "sendrecv")  # offer directions in which the caller receives media
_SDP_ERRORS = (ValueError, AssertionError, IndexError, KeyError, TypeError)  # what aiortc's SDP parser raises
_AIORTC_ERRORS = (InternalError, InvalidAccessError, InvalidStateError, OperationError)


def _parse_offer(sdp: object, sdp_type: object, policy: IcePolicy) -> aiortc_sdp.SessionDescription:
    """Check that a signalled description is an offer the avatar can answer under ``policy``.

    Raises:
        SignalingError: with what is wrong and what to send instead.
    """
    if sdp_type != "offer":
        raise SignalingError(f'the session description has type {sdp_type!r}; send the offer (type "offer")')
    if not isinstance(sdp, str) or not sdp.strip():
        raise SignalingError("the offer's sdp is empty; send the SDP text of RTCPeerConnection.createOffer()")
    if len(sdp) > MAX_SDP_CHARS:
        raise SignalingError(f"the offer's sdp is {len(sdp)} characters, more than {MAX_SDP_CHARS}; is it SDP?")
    try:
        parsed = aiortc_sdp.SessionDescription.parse(sdp)
    except StopIteration:  # aiortc looks up the codec of each a=fmtp / a=rtcp-fb line with next()
        raise SignalingError("the offer's sdp has an a=fmtp or a=rtcp-fb line for a payload type without an "
                             "a=rtpmap line; send the offer the browser made, unchanged") from None
    except _SDP_ERRORS as exc:
        raise SignalingError(f"the offer's sdp cannot be parsed ({_describe(exc)}); send SDP text") from None
    if not parsed.media:
        raise SignalingError("the offer's sdp has no m= line; add a video transceiver before creating the offer")
    _check_transport_lines(parsed)
    if not any(m.kind == "video" and m.direction in _RECEIVING for m in parsed.media):
        raise SignalingError(
            "the offer does not receive video: add a transceiver with addTransceiver('video', "
            "{direction: 'recvonly'}) before creating the offer"
        )
    hosts = [c.ip for m in parsed.media for c in m.ice_candidates]
    if not hosts:
        raise SignalingError(
            "the offer carries no ICE candidates: send it once ICE gathering is complete "
            "(iceGatheringState 'complete'), this server does not take trickled candidates"
        )
    if not any(policy.allows_remote(host) for host in hosts):
        reachable = ", ".join((*policy.allowed_addresses, *policy.remote_networks))
        raise SignalingError(
            f"none of the offer's ICE candidates ({', '.join(sorted(set(hosts)))}) is on an address this server "
            f"may reach ({reachable}); a browser on this machine needs --allow-loopback-in-peer-connection, "
            "a browser on another machine needs the server started with --ice-address (its LAN address) and "
            "--ice-remote-network (the callers' network)"
        )
    return parsed


def _check_transport_lines(parsed: aiortc_sdp.SessionDescription) -> None:
    """Refuse offers whose transport lines aiortc would trip over (with an unhelpful error, or a failure in a
    background task of the connection after the answer was sent): DTLS role and fingerprint, ICE credentials,
    candidate ports, and BUNDLE groups that name sections the offer does not have."""
    mids = {m.rtp.muxId for m in parsed.media}
    for index, media in enumerate(parsed.media):
        if media.kind not in ("audio", "video"):
            continue
        where = f"m={media.kind} section {index}"
        if media.dtls is None:
            raise SignalingError(f"the offer's {where} has no a=setup line (the DTLS role); send the offer the "
                                 "browser made, unchanged")
        if not media.dtls.fingerprints:
            raise SignalingError(f"the offer's {where} has no a=fingerprint line; WebRTC needs DTLS: send the "
                                 "offer the browser made, unchanged")
        if not media.ice or not media.ice.usernameFragment or not media.ice.password:
            raise SignalingError(f"the offer's {where} lacks a=ice-ufrag or a=ice-pwd; send the offer the "
                                 "browser made, unchanged")
        for candidate in media.ice_candidates:
            if not 0 < candidate.port < 65536:
                raise SignalingError(f"the offer's {where} has an ICE candidate on port {candidate.port}; "
                                     "ports go from 1 to 65535")
    for group in parsed.group:
        if group.semantic == "BUNDLE":
            unknown = [str(mid) for mid in group.items if mid not in mids]
            if unknown:
                raise SignalingError(f"the offer's a=group:BUNDLE names {', '.join(map(repr, unknown))}, which no "
                                     "m= section has (a=mid); send the offer the browser made, unchanged")


class AvatarPeer:
    """The server end of one WebRTC call to an avatar session (see the module docstring).

    Args:
        session: the avatar session whose video and audio this peer sends (already started).
        policy: the ICE allow-list.
        on_closed: called once, on the event loop, when the call has ended and been released.
        silence_timeout_s: hang up when nothing was heard from a connected caller for this long.
        connect_timeout_s: hang up when a call answered this long ago has not connected.
    """

    def __init__(
        self,
        session: AvatarSession,
        *,
        policy: IcePolicy,
        on_closed: Callable[[], None],
        silence_timeout_s: float = 5.0,
        connect_timeout_s: float = 15.0,
    ) -> None:
        self.session = session
        self.policy = policy
        self.silence_timeout_s = silence_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.end_reason: str | None = None
        self.video_track: AvatarVideoTrack | None = None
        self.audio_track: AvatarAudioTrack | None = None
        self.microphone_frames = 0
        self._on_closed = on_closed
        self._pc = RTCPeerConnection(rtc_configuration())
        self._guard = IceGuard(policy)
        self._answered = False
        self._connected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Task[None] | None = None
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_connection_state)

    @property
    def connection_state(self) -> str:
        """aiortc's connection state: new, connecting, connected, failed or closed."""
        return str(self._pc.connectionState)

    @property
    def guard(self) -> IceGuard:
        """The ICE allow-list enforcement of this call (its counters show dropped checks and candidates)."""
        return self._guard

    async def answer(self, sdp: str, type: str) -> RTCSessionDescription:
        """Answer a caller's offer; the answer carries our (allowed) ICE candidates.

        Args:
            sdp: the offer's SDP text.
            type: must be ``"offer"``.

        Returns:
            The answer to send back.

        Raises:
            SignalingError: the offer is malformed, not an offer, or does not receive video; the peer is
                closed (``on_closed`` is called).
        """
        if self._answered or self._closing is not None:
            raise SignalingError("this call has already been answered; start a new call with a new offer")
        self._answered = True
        try:
            offer = _parse_offer(sdp, type, self.policy)
            await self._pc.setRemoteDescription(
                RTCSessionDescription(sdp=self.policy.filter_remote_sdp(sdp), type="offer")
            )
            self.video_track = AvatarVideoTrack(self.session, fps=self.session.config.fps)
            self._send_video_only(offer)
            if any(m.kind == "audio" and m.direction in _RECEIVING for m in offer.media):
                self.audio_track = AvatarAudioTrack(self.session)
                self._pc.addTrack(self.audio_track)
            self._guard.attach(self._pc)  # after every transceiver exists, before gathering
            await self._pc.setLocalDescription(await self._pc.createAnswer())
        except SignalingError as exc:
            self._end(f"offer refused: {exc}")
            await self.close()
            raise
        except Exception as exc:  # aiortc raises all sorts on SDP it did not expect (AttributeError, StopIteration...)
            self._end(f"offer refused: {_describe(exc)}")
            await self.close()
            hint = str(exc) if isinstance(exc, _AIORTC_ERRORS) and str(exc) else _describe(exc)
            raise SignalingError(f"the offer cannot be answered ({hint}); send the offer the browser made, "
                                 "unchanged") from None
        except BaseException:  # cancelled: release, and let the cancellation through
            await self.close()
            raise
        self._spawn(self._watch(), "watchdog")
        local = self._pc.localDescription
        return RTCSessionDescription(sdp=self.policy.filter_local_sdp(local.sdp), type=local.type)

    def _send_video_only(self, offer: aiortc_sdp.SessionDescription) -> None:
        """Send the avatar on the first video section the caller receives on, and receive no video at all.

        A browser that offers its camera (``sendrecv``) would otherwise get it received and decoded into a
        queue nobody reads: the avatar's video section is answered ``sendonly``, any other ``inactive``.
        """
        receiving = {m.rtp.muxId for m in offer.media if m.kind == "video" and m.direction in _RECEIVING}
        chosen = None
        for transceiver in self._pc.getTransceivers():
            if transceiver.kind != "video":
                continue
            if chosen is None and transceiver.mid in receiving:
                chosen = transceiver
                transceiver.sender.replaceTrack(self.video_track)
                transceiver.direction = "sendonly"
            else:
                transceiver.direction = "inactive"
        if chosen is None:
            raise SignalingError("the offer has no video section this server can send on; add a transceiver with "
                                 "addTransceiver('video', {direction: 'recvonly'}) before creating the offer")

    async def close(self) -> None:
        """Hang up and release everything; idempotent (later calls wait for the first to finish)."""
        self._end("closed by the server")
        assert self._closing is not None
        await asyncio.shield(self._closing)

    # -- events --------------------------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._consume_microphone(track), "microphone")

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed", "disconnected"):
            self._end(f"connection {state}")

    def _end(self, reason: str) -> None:
        """Start releasing the call once (safe to call from the peer's own tasks and callbacks)."""
        if self._closing is None:
            self.end_reason = reason
            logger.info("WebRTC call ends: %s", reason)
            self._closing = asyncio.get_running_loop().create_task(self._release(), name="avatar-peer-close")

    def _spawn(self, coro: Any, name: str) -> None:
        if self._closing is not None:
            coro.close()
            return
        self._tasks.add(asyncio.get_running_loop().create_task(coro, name=f"avatar-peer-{name}"))

    async def _release(self) -> None:
        try:
            current = asyncio.current_task()
            tasks = [t for t in self._tasks if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.clear()
            try:
                await self._pc.close()  # stops the senders (their recv() is cancelled) and the sockets
            except Exception:  # a connection that a malformed offer left half built
                logger.warning("closing the peer connection failed; stopping its transports one by one",
                               exc_info=True)
                await _stop_transports(self._pc)
        finally:
            try:
                self._on_closed()
            except Exception:
                logger.exception("on_closed callback failed")

    # -- tasks ---------------------------------------------------------------------------------
    async def _consume_microphone(self, track: MediaStreamTrack) -> None:
        """Hand each decoded caller audio frame (48 kHz from Opus) to the session as mono int16."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.AudioFrame):
                    continue
                self.session.push_microphone(_mono_int16(frame), frame.sample_rate)
                self.microphone_frames += 1

    async def _watch(self) -> None:
        """Hang up on a call that never connects, or on a caller not heard from for ``silence_timeout_s``."""
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await self._connected.wait()
        except TimeoutError:
            self._end(f"not connected {self.connect_timeout_s:g} s after the answer")
            return
        # Sleeps until the caller would have been silent too long, so a live call wakes it rarely.
        while True:
            heard_s = self._guard.seconds_since_heard()
            remaining = self.silence_timeout_s - (heard_s if heard_s is not None else 0.0)
            if remaining <= 0:
                self._end(f"caller silent for {heard_s:.1f} s (vanished)")
                return
            await asyncio.sleep(remaining)


def _describe(exc: BaseException) -> str:
    """``ValueError: message``, or the class name alone when there is no message."""
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


async def _stop_transports(pc: RTCPeerConnection) -> None:
    """Stop every DTLS and ICE transport of ``pc`` that exists, whatever state the connection is in."""
    for transceiver in pc.getTransceivers():
        with contextlib.suppress(Exception):
            await transceiver.stop()
        dtls = transceiver.receiver.transport
        for transport in (dtls, getattr(dtls, "transport", None)):
            if transport is not None:
                with contextlib.suppress(Exception):
                    await transport.stop()


def _mono_int16(frame: av.AudioFrame) -> np.ndarray:
    """(samples,) int16: the frame's channels averaged (aiortc's Opus decoder gives packed s16 stereo)."""
    data = frame.to_ndarray()
    channels = frame.layout.nb_channels
    # Packed formats interleave the channels in one plane; planar ones give one row per channel.
    per_channel = data.reshape(channels, -1) if frame.format.is_planar else data.reshape(-1, channels).T
    mixed = per_channel.astype(np.float32).mean(axis=0)
    if data.dtype.kind == "f":  # flt / fltp in [-1, 1]
        mixed *= 32767.0
    return np.clip(np.round(mixed), -32768, 32767).astype(np.int16)

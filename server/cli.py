"""The ``emote`` command line: render a talking video from a portrait and speech.

``emote render`` is the offline path (portrait + audio file → MP4);
``emote demo`` renders the bundled default portrait saying a sentence
spoken by the offline text-to-speech engine; ``emote eval`` measures
generated videos against real talking videos; ``emote serve`` runs the live
server (WebRTC avatar, web client, agent audio socket; see server/app.py).
Errors a user can cause are printed as one line naming the input and what
to do, with exit code 2; a missing optional component exits with 3; Ctrl-C
exits with 130 and leaves no half-written output behind. ``emote serve``
stops cleanly on SIGTERM or Ctrl-C (closing every session) and exits with 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emote.model.errors import DependencyError, EmoteError, InputError, MultipleFacesWarning, OptionError

if TYPE_CHECKING:
    from emote.server.config import ServerConfig

DEMO_TEXT = (
    "Hello! I am Emote, a talking portrait. Give me one photo and some speech, "
    "and I will say anything you like, with my lips in sync, a little nod now and then, "
    "and the occasional blink."
)


class _Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, stream=sys.stderr) -> None:  # type: ignore[no-untyped-def]
        self.stream = stream
        self.enabled = stream.isatty()
        self.start = time.perf_counter()
        self.last = 0.0

    def __call__(self, done_s: float, total_s: float | None) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.1 and (total_s is None or done_s < total_s)):
            return
        self.last = now
        speed = done_s / max(now - self.start, 1e-6)
        if total_s:
            frac = min(1.0, done_s / total_s)
            bar = "#" * int(frac * 30)
            line = f"\r[{bar:<30}] {frac * 100:5.1f}%  {done_s:6.1f}/{total_s:.1f} s audio  {speed:4.1f}x real time"
        else:
            line = f"\r{done_s:6.1f} s audio  {speed:4.1f}x real time"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def _add_motion_option(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    from emote.model.motion.registry import DEFAULT_GENERATOR, generator_names

    names = ", ".join(generator_names())
    if several:
        default = ",".join(dict.fromkeys([DEFAULT_GENERATOR, "baseline", "still"]))
        p.add_argument("--motion", default=default,
                       help=f"comma-separated motion generators to compare ({names}; default {default})")
    else:
        p.add_argument("--motion", default=DEFAULT_GENERATOR,
                       help=f"motion generator: {names} (default {DEFAULT_GENERATOR})")


def _add_render_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="MP4 file to write")
    p.add_argument("--fps", type=float, default=25.0, help="frames per second (default 25)")
    p.add_argument("--size", type=int, default=512, help="side of the square video around the face (default 512)")
    p.add_argument("--full-frame", action="store_true", help="show the whole picture instead of a face crop")
    p.add_argument("--seed", type=int, default=0, help="random seed of head motion, blinks and gaze")
    p.add_argument("--face", type=int, default=None, metavar="N",
                   help="which face to animate when there are several (0 = largest)")
    p.add_argument("--reference", default=None, metavar="CLIP",
                   help="a few seconds of video of the same person talking, face to the camera: its real open "
                        "mouths (teeth, tongue, shadows) are drawn instead of painted ones")
    _add_motion_option(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emote", description="Talking portraits from one photo and speech.")
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="render PORTRAIT speaking AUDIO to an MP4 file")
    render.add_argument("portrait", help="photo or painting with one clearly visible face")
    render.add_argument("audio", help="speech or singing: wav, mp3, ogg, flac, m4a, or a video file's audio")
    _add_render_options(render)
    demo = sub.add_parser("demo", help="render the bundled portrait saying a sentence (needs the tts extra)")
    demo.add_argument("-o", "--output", default="out/demo.mp4", help="MP4 file to write (default out/demo.mp4)")
    demo.add_argument("--text", default=DEMO_TEXT, help="what the portrait says")
    demo.add_argument("--portrait", default=None, help="use this portrait instead of the bundled one")
    ev = sub.add_parser("eval", help="measure generated videos against real talking videos")
    ev.add_argument("videos", nargs="+", metavar="VIDEO_OR_FOLDER", help="real talking videos, or folders of them")
    ev.add_argument("--out", default=None,
                    help="folder for metrics, side-by-sides and the summary (default out/eval, out/reenact)")
    _add_motion_option(ev, several=True)
    ev.add_argument("--portrait", default=None, help="animate this image instead of each video's first frame")
    ev.add_argument("--seed", type=int, default=0, help="random seed of the generators")
    ev.add_argument("--renderer", action="store_true",
                    help="judge the renderer alone: re-enact each video's own measured motion from its first frame "
                         "and compare the frames (PSNR, SSIM, landmark error); no motion model takes part")
    ev.add_argument("--reference", action="store_true",
                    help="with --renderer: also re-enact each video's first half with the real mouth interiors of its "
                         "second half (as `emote render --reference` does) and compare both on that half")
    data = sub.add_parser("dataset", help="measure real talking videos into a training set (motion + audio), "
                                          "split by person")
    data.add_argument("videos", nargs="+", metavar="VIDEO_OR_FOLDER", help="talking videos, or folders of them")
    data.add_argument("-o", "--output", required=True, help="dataset folder (created, or added to)")
    data.add_argument("--people", default=None, metavar="JSON",
                      help="a JSON object {video file name: person}; unnamed videos are grouped by face")
    tr = sub.add_parser("train", help="train the diffusion motion model (teacher, then a one-step student) on a "
                                      "dataset built by `emote dataset`")
    tr.add_argument("dataset", help="the dataset folder")
    tr.add_argument("-o", "--output", required=True,
                    help="folder for teacher/, student/, metrics.json and curves.png")
    tr.add_argument("--teacher-steps", type=int, default=None, help="optimiser steps of the teacher (default 6000)")
    tr.add_argument("--student-steps", type=int, default=None, help="optimiser steps of the student (default 4000)")
    tr.add_argument("--pairs", type=int, default=None, help="teacher samples for distillation (default 20000)")
    tr.add_argument("--features", default=None, metavar="SET",
                    help="audio features: mel, mel+formants, mel+prior, or any of them +speech or +speech1s "
                         "(Whisper's encoder over 2 s or 1 s of audio; default mel+formants+speech)")
    tr.add_argument("--seed", type=int, default=0, help="random seed of the run (default 0)")
    serve = sub.add_parser("serve", help="run the live server: a talking avatar over WebRTC, web client at /")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8080, help="port for HTTP and WebSocket (default 8080, 0 = any)")
    serve.add_argument("--portrait", default=None, help="default portrait (default: the bundled one)")
    serve.add_argument("--max-sessions", type=int, default=2, help="concurrent sessions (default 2)")
    _add_motion_option(serve)
    serve.add_argument("--data-dir", default=None,
                       help="where uploaded portraits are kept (default $EMOTE_DATA_DIR or ~/.local/share/emote)")
    serve.add_argument("--ice-address", action="append", default=None, metavar="IP",
                       help="a local address WebRTC media may use; repeat for several (default 127.0.0.1 only)")
    serve.add_argument("--ice-remote-network", action="append", default=None, metavar="CIDR",
                       help="a network callers may call from, e.g. 192.168.1.0/24; repeat for several "
                            "(default: none, only this machine's --ice-address)")
    return parser


def _eval(args: argparse.Namespace) -> None:
    if args.renderer:
        from emote.evaluation.reenact import run_reenactment

        if args.portrait is not None:
            raise OptionError("--portrait with --renderer: a re-enactment's portrait is each video's first frame")
        out = args.out or "out/reenact"
        _, summary = run_reenactment(args.videos, out, reference=args.reference,
                                     progress=lambda msg: print(msg, file=sys.stderr))
        print(summary)
        print(f"per-video metrics, side-by-side videos and the worst mouths are in {Path(out).resolve()}")
        return
    if args.reference:
        raise OptionError("--reference needs --renderer: it measures the renderer's mouths, not a motion model")
    from emote.evaluation.run import run_eval

    generators = [g.strip() for g in args.motion.split(",") if g.strip()]
    out = args.out or "out/eval"
    reports, summary = run_eval(args.videos, out, generators, portrait=args.portrait, seed=args.seed,
                                progress=lambda msg: print(msg, file=sys.stderr))
    print(summary)
    print(f"per-video metrics, side-by-side videos and contact sheets are in {Path(out).resolve()}")


def _dataset(args: argparse.Namespace) -> None:
    import json

    from emote.model.motion.diffusion.dataset import build_dataset

    people = None
    if args.people:
        try:
            people = json.loads(Path(args.people).read_text())
        except (OSError, ValueError) as exc:
            raise OptionError(f"--people {args.people}: cannot be read as JSON ({exc}); give a file with "
                              '{"video.mp4": "person name", ...}') from None
        if not isinstance(people, dict) or not all(isinstance(v, str) for v in people.values()):
            raise OptionError(f"--people {args.people}: must be a JSON object of file name -> person name")
    records = build_dataset(args.videos, args.output, people=people,
                            progress=lambda line: print(line, file=sys.stderr, flush=True))
    ok = [r for r in records if r.status == "ok"]
    split = json.loads((Path(args.output) / "split.json").read_text())["people"]
    sides = {side: sorted(p for p, e in split.items() if e["side"] == side) for side in ("train", "validation")}
    minutes = {side: sum(r.frames for r in ok if split.get(r.person, {}).get("side") == side) / 25 / 60
               for side in sides}
    print(f"{len(ok)} of {len(records)} videos used; train: {len(sides['train'])} people, {minutes['train']:.1f} min; "
          f"validation: {len(sides['validation'])} people, {minutes['validation']:.1f} min "
          f"(split.json in {Path(args.output).resolve()})")


def _train(args: argparse.Namespace) -> None:
    import dataclasses

    import torch

    from emote.model.motion.diffusion.train import TrainConfig, train

    options: dict[str, Any] = {"seed": args.seed}
    for name in ("teacher_steps", "student_steps", "pairs"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise OptionError(f"--{name.replace('_', '-')} {value}: give a positive number")
            options[name] = value
    if args.features is not None:
        from emote.model.motion.diffusion.features import spectral_set

        try:
            spectral_set(args.features)
        except ValueError as exc:
            raise OptionError(f"--features {args.features}: {exc}") from None
        options["features"] = args.features
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    metrics = train(args.dataset, args.output, dataclasses.replace(TrainConfig(), **options),
                    progress=lambda line: print(line, file=sys.stderr, flush=True))
    last = metrics["student"][-1]
    print(f"trained in {(time.perf_counter() - started) / 60:.1f} min; student: validation jawOpen r "
          f"{last['jaw_r']:.3f}, one-step loss {last['sample_loss']:.4f}; weights in "
          f"{Path(args.output).resolve() / 'student'}")


def _render(portrait: str, audio: str, args: argparse.Namespace) -> None:
    from emote.model.motion.registry import usage_notice
    from emote.streaming.offline import render_file

    if notice := usage_notice(args.motion):
        print(f"emote: motion {args.motion}: {notice}", file=sys.stderr)

    progress = _Progress()
    try:
        stats = render_file(portrait, audio, args.output, fps=args.fps, size=args.size, full_frame=args.full_frame,
                            seed=args.seed, face_index=args.face, motion=args.motion, reference=args.reference,
                            progress=progress)
    finally:
        progress.close()
    speed = stats.duration_s / max(stats.wall_s, 1e-9)
    print(f"wrote {args.output}: {stats.frames} frames, {stats.duration_s:.2f} s, "
          f"rendered in {stats.wall_s:.1f} s ({speed:.1f}x real time)")


def _demo(args: argparse.Namespace) -> None:
    from emote.model.assets import default_portrait_path
    from emote.model.media.audio_io import write_wav
    from emote.model.motion.registry import DEFAULT_GENERATOR
    from emote.server.tts import synthesize

    samples, rate = synthesize(args.text)
    with tempfile.TemporaryDirectory(prefix="emote-demo-") as tmp:
        speech = str(Path(tmp) / "speech.wav")
        write_wav(speech, samples, rate)
        args.fps, args.size, args.full_frame, args.seed, args.face, args.reference = 25.0, 512, False, 0, None, None
        args.motion = DEFAULT_GENERATOR
        _render(args.portrait or str(default_portrait_path()), speech, args)
    print(f"open {Path(args.output).resolve()} to watch the demo")


def serve_config(args: argparse.Namespace) -> ServerConfig:
    """The server settings ``emote serve`` options ask for (checked: a bad one raises OptionError)."""
    from emote.server.config import ServerConfig

    options: dict[str, object] = {"host": args.host, "port": args.port, "max_sessions": args.max_sessions,
                                  "motion": args.motion}
    if args.portrait:
        options["portrait"] = Path(args.portrait)
    if args.data_dir:
        options["data_dir"] = Path(args.data_dir)
    if args.ice_address:
        options["ice_addresses"] = tuple(args.ice_address)
    if args.ice_remote_network:
        options["ice_remote_networks"] = tuple(args.ice_remote_network)
    config = ServerConfig(**options)  # type: ignore[arg-type]
    config.ice_policy()  # a wildcard or host name in --ice-address fails here, not at the first call
    return config


def _serve(args: argparse.Namespace) -> None:
    import logging
    import signal
    import socket

    config = serve_config(args)
    try:  # the port first: a busy one fails at once
        family, kind, proto, _, address = socket.getaddrinfo(
            config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise InputError(f"cannot listen on {config.host}:{config.port} ({exc.strerror or exc}); "
                         "choose another --port or --host") from None
    try:
        import uvicorn

        from emote.model.assets import default_portrait_path
        from emote.model.motion.registry import make_generator, usage_notice
        from emote.model.render.registry import prepare_portrait
        from emote.server.agent_ws import MAX_AUDIO_MESSAGE_BYTES
        from emote.server.app import create_app
        from emote.streaming.speech_gate import load_vad_model

        # Analyse the default portrait and load the speech gate's and the motion model now: a bad --portrait
        # or missing weights fail here with their message, and the first caller does not wait for them.
        print("emote: preparing the portrait and models ...", file=sys.stderr, flush=True)
        prepare_portrait(config.portrait or default_portrait_path(), size=config.size, face_index=0)
        load_vad_model()
        make_generator(config.motion)
        if notice := usage_notice(config.motion):
            print(f"emote: motion {config.motion}: {notice}", file=sys.stderr, flush=True)
        sock.listen(128)  # from here, connections wait in the backlog until the server accepts them
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    logging.basicConfig(level=logging.WARNING, format="emote: %(levelname)s: %(name)s: %(message)s")
    logging.getLogger("emote.server").setLevel(logging.INFO)
    server = uvicorn.Server(uvicorn.Config(
        create_app(config), loop="uvloop", http="httptools", ws="websockets-sansio",
        ws_max_size=MAX_AUDIO_MESSAGE_BYTES + 4096, lifespan="on", access_log=False, log_level="warning",
        timeout_graceful_shutdown=int(max(1, config.shutdown_timeout_s)),
    ))
    stops: list[int] = []
    # uvicorn handles SIGINT/SIGTERM while it runs and re-raises them afterwards to the handlers found
    # before it started; these record the signal, so that a requested stop ends with exit code 0.
    previous = {sig: signal.signal(sig, lambda signum, _frame: stops.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"emote: serving on http://{shown}:{port} (max {config.max_sessions} sessions); "
          "open it in a browser, Ctrl-C stops", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("emote: stopped; every session was closed", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def show_warning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        prefix = "warning" if issubclass(category, MultipleFacesWarning) else category.__name__
        print(f"emote: {prefix}: {message}", file=sys.stderr)

    warnings.showwarning = show_warning
    try:
        if args.command == "render":
            _render(args.portrait, args.audio, args)
        elif args.command == "demo":
            _demo(args)
        elif args.command == "eval":
            _eval(args)
        elif args.command == "dataset":
            _dataset(args)
        elif args.command == "train":
            _train(args)
        elif args.command == "serve":
            _serve(args)
    except InputError as exc:
        print(f"emote: error: {exc}", file=sys.stderr)
        return 2
    except DependencyError as exc:
        print(f"emote: missing component: {exc}", file=sys.stderr)
        return 3
    except EmoteError as exc:
        print(f"emote: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nemote: interrupted; no output was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

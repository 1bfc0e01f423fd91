"""A test RTSP camera: raw RGB frames from a file, H.264 over RTSP at a fixed rate, one mount per camera.

Runs under Debian's system Python (/usr/bin/python3), which has GStreamer's bindings (`gi`); the
project's venv does not. Frames come from a file of back-to-back (HEIGHT, WIDTH, 3) RGB frames that
the caller wrote, served in a loop. With --stamp, each frame carries its running index as a strip of
black and white blocks in its top-left corner (see tests/cameras/stamps.py), and with --log each push
is printed as `push MOUNT INDEX UNIX_TIME`, so a reader can tell which frame left the "camera" when.
With --encoded-loop N the frames are encoded once at start (N stamped frames, stamps 0..N-1, a keyframe
every fps frames) and the camera sends that H.264 in a loop, as a camera's own encoder would: serving
costs almost no CPU, so a benchmark on the same machine measures the readers, not the test's encoder.
Prints `ready PORT` once listening.
"""

import argparse
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

STAMP_BITS = 16
STAMP_BLOCK = 16  # pixels per bit side: large enough to survive H.264 at low bitrates


def stamp(frame: bytearray, index: int, width: int) -> bytes:
    """The frame with `index` written as STAMP_BITS blocks (white = 1) on a black strip at its top left."""
    stamped = bytearray(frame)
    row_bytes = width * 3
    for bit in range(STAMP_BITS):
        value = 255 if (index >> bit) & 1 else 0
        block = bytes([value]) * (STAMP_BLOCK * 3)
        for y in range(STAMP_BLOCK):
            start = y * row_bytes + bit * STAMP_BLOCK * 3
            stamped[start : start + STAMP_BLOCK * 3] = block
    return bytes(stamped)


def raw_caps(a) -> str:
    return f"video/x-raw,format=RGB,width={a.width},height={a.height},framerate={a.fps}/1"


def encoder(a) -> str:
    return (
        f"videoconvert ! video/x-raw,format=I420 ! x264enc tune=zerolatency speed-preset=ultrafast "
        f"key-int-max={a.fps} bitrate={a.bitrate}"
    )


def encode_loop(frames: list[bytes], a) -> list[bytes]:
    """`a.encoded_loop` frames (stamped 0.. when a.stamp) as H.264 access units, each GOP starting with a keyframe."""
    pipeline = Gst.parse_launch(
        f"appsrc name=src format=time caps={raw_caps(a)} ! {encoder(a)} ! "
        "video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    )
    source, sink = pipeline.get_by_name("src"), pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    units = []
    for index in range(a.encoded_loop):
        frame = frames[index % len(frames)]
        buffer = Gst.Buffer.new_wrapped(stamp(frame, index, a.width) if a.stamp else frame)
        buffer.pts = buffer.dts = index * Gst.SECOND // a.fps
        buffer.duration = Gst.SECOND // a.fps
        source.emit("push-buffer", buffer)
        sample = sink.emit("pull-sample")  # zerolatency: one access unit out per frame in
        units.append(sample.get_buffer().extract_dup(0, sample.get_buffer().get_size()))
    source.emit("end-of-stream")
    pipeline.set_state(Gst.State.NULL)
    return units


class Camera(GstRtspServer.RTSPMediaFactory):
    """One mount: every client shares one pipeline fed by a thread that pushes a frame every 1/fps s."""

    def __init__(self, mount: str, frames: list[bytes], args) -> None:
        super().__init__()
        self.mount, self.frames, self.args = mount, frames, args
        self.set_shared(True)
        self.connect("media-configure", self._configure)

    def do_create_element(self, url):
        a = self.args
        source = "appsrc name=src is-live=true do-timestamp=true format=time"
        if a.encoded_loop:
            launch = f"( {source} caps=video/x-h264,stream-format=byte-stream,alignment=au ! h264parse ! "
        else:
            launch = f"( {source} caps={raw_caps(a)} ! {encoder(a)} ! "
        return Gst.parse_launch(launch + "rtph264pay name=pay0 pt=96 config-interval=1 )")

    def _configure(self, factory, media) -> None:
        source = media.get_element().get_by_name_recurse_up("src")
        stop = threading.Event()
        media.connect("unprepared", lambda *_: stop.set())
        threading.Thread(target=self._push, args=(source, stop), daemon=True).start()

    def _push(self, source, stop: threading.Event) -> None:
        a = self.args
        started = time.monotonic()
        index = 0
        while not stop.is_set():
            delay = started + index / a.fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame = self.frames[index % len(self.frames)]
            if a.encoded_loop:
                data, number = frame, index % len(self.frames)  # already encoded and stamped
            else:
                data, number = (stamp(frame, index, a.width) if a.stamp else frame), index
            pushed_at = time.time()
            if source.emit("push-buffer", Gst.Buffer.new_wrapped(data)) != Gst.FlowReturn.OK:
                return
            if a.log:
                print(f"push {self.mount} {number} {pushed_at:.6f}", flush=True)
            index += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", required=True, help="file of back-to-back raw RGB frames")
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--mounts", type=int, default=1, help="cameras /cam0, /cam1, ...")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--bitrate", type=int, default=2000, help="kbit/s")
    parser.add_argument("--stamp", action="store_true", help="write each frame's index into its pixels")
    parser.add_argument("--log", action="store_true", help="print every push")
    parser.add_argument("--encoded-loop", type=int, default=0, help="encode N frames once and send them in a loop")
    args = parser.parse_args()
    if args.encoded_loop % args.fps:
        print(f"--encoded-loop {args.encoded_loop}: expected a multiple of --fps {args.fps} (whole GOPs)")
        return 2
    frame_bytes = args.width * args.height * 3
    data = open(args.frames, "rb").read()
    if not data or len(data) % frame_bytes:
        print(f"{args.frames}: {len(data)} bytes is not a whole number of {args.width}x{args.height} RGB frames")
        return 2
    frames = [data[start : start + frame_bytes] for start in range(0, len(data), frame_bytes)]
    Gst.init(None)
    if args.encoded_loop:
        frames = encode_loop(frames, args)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for number in range(args.mounts):
        mount = f"/cam{number}"
        mounts.add_factory(mount, Camera(mount, frames, args))
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", flush=True)
        return 1
    print(f"ready {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small, valid audio files (for synthetic data and probes): real headers, real frames."""

from __future__ import annotations

import random
import struct

__all__ = ["CONTENT_TYPES", "mp3_bytes", "wav_bytes"]

CONTENT_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg"}

# MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, no CRC, no padding, mono: 417-byte frames.
_MP3_FRAME_HEADER = bytes([0xFF, 0xFB, 0x90, 0xC0])
_MP3_FRAME_LEN = 144 * 128_000 // 44_100


def wav_bytes(rng: random.Random, *, sample_rate: int = 44_100, frames: int = 1024) -> bytes:
    """A mono 8-bit PCM RIFF/WAVE file of ``frames`` samples of quiet noise."""
    data = bytes(128 + rng.randrange(-8, 9) for _ in range(frames))
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, sample_rate, sample_rate, 1, 8)
    chunk = struct.pack("<4sI", b"data", len(data)) + data
    return struct.pack("<4sI4s", b"RIFF", 4 + len(fmt) + len(chunk), b"WAVE") + fmt + chunk


def mp3_bytes(rng: random.Random, *, frames: int = 2, id3: bool = False) -> bytes:
    """``frames`` silent MPEG audio frames, optionally behind an ID3v2.3 tag."""
    body = b"".join(_MP3_FRAME_HEADER + bytes(_MP3_FRAME_LEN - 4) for _ in range(frames))
    if not id3:
        return body
    title = f"csl sample {rng.randrange(10**6)}".encode()
    frame = b"TIT2" + struct.pack(">I", len(title) + 1) + b"\x00\x00" + b"\x00" + title
    size = len(frame)
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x03\x00\x00" + syncsafe + frame + body

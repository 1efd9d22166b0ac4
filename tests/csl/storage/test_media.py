"""Upload validation: extension, declared type and magic bytes must agree."""

from __future__ import annotations

import random
import struct

import pytest

from csl.devdata.audio import mp3_bytes, wav_bytes
from csl.storage.media import UploadRejected, sniff, validate

RNG = random.Random(3)
SAMPLES = {
    "wav": (wav_bytes(RNG, frames=64), "take.wav", "audio/wav"),
    "mp3": (mp3_bytes(RNG, frames=1), "take.mp3", "audio/mpeg"),
    "mp3-id3": (mp3_bytes(RNG, frames=1, id3=True), "take.mp3", "audio/mpeg"),
    "flac": (b"fLaC\x00\x00\x00\x22" + bytes(34), "take.flac", "audio/flac"),
    "ogg": (b"OggS\x00\x02" + bytes(40), "take.ogg", "audio/ogg"),
    "m4a": (struct.pack(">I", 24) + b"ftypM4A \x00\x00\x02\x00M4A mp42isom", "take.m4a", "audio/mp4"),
    "aac-adts": (b"\xff\xf1\x50\x80\x02\x1f\xfc" + bytes(20), "take.aac", "audio/aac"),
    "jpeg": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(20), "cover.jpg", "image/jpeg"),
    "png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + bytes(20), "cover.png", "image/png"),
    "webp": (b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(20), "cover.webp", "image/webp"),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_allowed_type_is_accepted(name):
    data, filename, content_type = SAMPLES[name]
    kind = validate(data, filename=filename, content_type=content_type)
    assert kind.name == {"mp3-id3": "mp3", "aac-adts": "m4a"}.get(name, name)


@pytest.mark.parametrize(("data", "filename", "content_type", "message"), [
    (b"MZ\x90\x00\x03" + bytes(60), "sample.wav", "audio/wav", "not a recognised audio or image file"),
    (SAMPLES["wav"][0], "take.exe", "audio/wav", "extension 'exe' is not allowed"),
    (SAMPLES["wav"][0], "take", "audio/wav", "extension '(none)' is not allowed"),
    (SAMPLES["wav"][0], "take.wav", "application/x-msdownload", "content type 'application/x-msdownload'"),
    (SAMPLES["png"][0], "take.wav", "audio/wav", "the content is PNG, but the extension says 'wav'"),
    (SAMPLES["wav"][0], "take.wav", "audio/mpeg", "declared 'audio/mpeg'"),
    (b"", "take.wav", "audio/wav", "the file is empty"),
])
def test_refusals_say_what_is_wrong(data, filename, content_type, message):
    with pytest.raises(UploadRejected, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(data, filename=filename, content_type=content_type)


def test_size_limit_per_type():
    data, filename, content_type = SAMPLES["jpeg"]
    with pytest.raises(UploadRejected, match="over the jpeg limit of 16 bytes"):
        validate(data, filename=filename, content_type=content_type, limits={"jpeg": 16})
    assert validate(SAMPLES["wav"][0], filename="a.wav", content_type="audio/wav", limits={"jpeg": 16}).name == "wav"


def test_sniff_does_not_take_text_for_audio():
    assert sniff(b"<html><body>not audio</body></html>") is None
    assert sniff(b"\xff\xfb\x90\xc0" + bytes(10)) == "mp3"


@pytest.mark.parametrize(("filename", "content_type", "message"), [
    ("take\r\n.wav", "audio/wav", r"file name .* control character U\+000D"),
    ("take\x7f.wav", "audio/wav", r"control character U\+007F"),
    ("take\u202egnp.wav", "audio/wav", r"control character U\+202E"),
    ("dir/take.wav", "audio/wav", "a name, not a path"),
    ("dir\\take.wav", "audio/wav", "a name, not a path"),
    ("", "audio/wav", "file name is empty"),
    ("take.wav", "audio/wav\nX-Evil: 1", r"content type .* control character U\+000A"),
    ("take.wav", "audio/wáv", "must be ASCII"),
])
def test_names_and_types_that_travel_as_headers_are_refused_with_control_characters(filename, content_type, message):
    with pytest.raises(UploadRejected, match=message):
        validate(SAMPLES["wav"][0], filename=filename, content_type=content_type)
    assert validate(SAMPLES["wav"][0], filename="Café ñandú.wav", content_type="audio/wav").name == "wav"

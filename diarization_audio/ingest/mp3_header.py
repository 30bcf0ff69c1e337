"""How many samples an MP3 decodes to, read from the Xing/Info and LAME tags of its first frame.

ffmpeg trims an encoder's padding from the end of an MP3 it reads from a file, but not from one
it reads from a pipe, so a call converted while downloading would come out a few milliseconds
longer than the same call converted once complete. With the exact length taken from the tag,
the streamed conversion is cut to it and both give the same WAV, byte for byte.

Layout (the LAME tag specification, as ffmpeg's mp3 demuxer reads it): an optional ID3v2 tag,
then a first frame whose side information is followed by "Xing" or "Info", 4 bytes of flags, the
frame count (flag 1), the byte count (flag 2), a 100-byte table (flag 4), a quality (flag 8),
then a 9-byte encoder name and, 21 bytes after it, the encoder delay and padding (12 bits each).
"""

from __future__ import annotations

# ffmpeg applies the tag's delay and padding only for these encoders.
_ENCODERS = (b"LAME", b"Lavf", b"Lavc")


def decoded_samples(head: bytes) -> int | None:
    """The samples per channel an MP3 starting with `head` decodes to, when its first frame
    carries a frame count and the encoder's delay and padding; otherwise None."""
    start = _after_id3v2(head)
    if start is None or len(head) < start + 4:
        return None
    header = int.from_bytes(head[start : start + 4], "big")
    if header >> 21 != 0x7FF:
        return None
    version = (header >> 19) & 3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    layer = (header >> 17) & 3  # 1: layer III
    rate_index = (header >> 10) & 3
    if version == 1 or layer != 1 or rate_index == 3:
        return None
    mono = (header >> 6) & 3 == 3
    if version == 3:
        side_info, per_frame = (17 if mono else 32), 1152
    else:
        side_info, per_frame = (9 if mono else 17), 576
    tag = start + 4 + side_info
    if head[tag : tag + 4] not in (b"Xing", b"Info"):
        return None
    flags = int.from_bytes(head[tag + 4 : tag + 8], "big")
    if not flags & 1:
        return None
    frames = int.from_bytes(head[tag + 8 : tag + 12], "big")
    encoder = tag + 8 + 4 * bool(flags & 1) + 4 * bool(flags & 2) + 100 * bool(flags & 4)
    encoder += 4 * bool(flags & 8)
    if head[encoder : encoder + 4] not in _ENCODERS or len(head) < encoder + 24:
        return None
    delays = int.from_bytes(head[encoder + 21 : encoder + 24], "big")
    delay, padding = delays >> 12, delays & 0xFFF
    samples = frames * per_frame - delay - padding
    return samples if samples > 0 else None


def _after_id3v2(head: bytes) -> int | None:
    """Where the audio starts after an ID3v2 tag (0 without one); None if `head` ends first."""
    if head[:3] != b"ID3":
        return 0
    if len(head) < 10:
        return None
    size = 0
    for byte in head[6:10]:  # a "syncsafe" integer: 7 bits per byte
        size = size << 7 | (byte & 0x7F)
    footer = 10 if head[5] & 0x10 else 0
    return 10 + size + footer

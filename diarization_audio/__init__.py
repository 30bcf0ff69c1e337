"""Collects two-party call audio for speaker-diarization training: each conversation's legs
downloaded, converted to 16 kHz mono 16-bit WAV, recorded, labelled and exported.

Subpackages by the stage a call goes through, each importing only from the stages and shared
modules listed under it (tests/test_layers.py holds the rule):

    ingest/    fetch a URL, convert it with ffmpeg, store the WAV   (store, labels, shared)
    labels/    who speaks when on each leg, and the leg's quality   (store, shared)
    store/     the database of stored files, its reports, the JSON export  (shared)
    dataset/   the training-set export, one writer per format       (store, shared)
    service/   the HTTP service: app, routes, dashboard, metrics    (any of the above)
    cli/       one module per command, and the HTTP client they use (any of the above)

The shared modules at this level (settings, errors, logs, metrics, processes, url_secrets)
import nothing from the subpackages.
"""

from importlib import metadata

DISTRIBUTION = "diarization-audio-downloader"
# The version of a source tree run without installing it: pyproject.toml's, which a test
# keeps equal to this.
SOURCE_VERSION = "1.0.0"

try:
    __version__ = metadata.version(DISTRIBUTION)
except metadata.PackageNotFoundError:
    __version__ = SOURCE_VERSION

"""Fetching a source URL, converting it with ffmpeg while it downloads, storing the WAV."""

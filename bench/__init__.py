"""The performance benchmark: the service against bare ffmpeg and yt-dlp; `python -m bench`."""

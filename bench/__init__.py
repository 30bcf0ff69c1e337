"""The performance benchmark: the service against bare ffmpeg and yt-dlp; `python -m bench`."""

import sys
from pathlib import Path

# The test suite's fixtures are the benchmark's too (the source server, the audio factory, the
# real uvicorn process), and the service's modules sit at the repository root.
_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT / "tests", _ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

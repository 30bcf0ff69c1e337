"""`python analyze_storage.py`: the storage and progress report (`--help`).
The code is in diarization_audio/cli/report.py."""

from diarization_audio.cli.report import main

if __name__ == "__main__":
    raise SystemExit(main())

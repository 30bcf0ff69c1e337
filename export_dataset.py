"""`python export_dataset.py`: the training-set export (`--help`).
The code is in diarization_audio/cli/export.py."""

from diarization_audio.cli.export import main

if __name__ == "__main__":
    raise SystemExit(main())

"""`python metadata_tracker.py`: the store's statistics, its JSON export and labelling (`--help`).
The code is in diarization_audio/cli/store.py."""

from diarization_audio.cli.store import main

if __name__ == "__main__":
    raise SystemExit(main())

"""`python batch_download_from_csv.py FILE.csv`: the conversations of a CSV downloaded through
the running service (`--help`). The code is in diarization_audio/cli/batch.py."""

from diarization_audio.cli.batch import main

if __name__ == "__main__":
    raise SystemExit(main())

"""`python test_single_download.py FILE.csv`: one conversation of a CSV downloaded through the
running service, to check the set-up (`--help`). The code is in diarization_audio/cli/check.py."""

from diarization_audio.cli.check import main

if __name__ == "__main__":
    raise SystemExit(main())

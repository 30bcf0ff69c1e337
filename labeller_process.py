"""Start-up of the speech labelling process; it is imported first by the fork server that
LabelWorker (speech_labeller.py) starts its process from, and by nothing else.

It makes that fork server, and the labelling process forked from it, ignore stop signals sent to
the whole process group (as systemd sends SIGTERM): the service decides when they end, by
shutting its pool down after the jobs in flight, and a fork server ended by a stray SIGTERM would
take its children's exit reports with it, so the service would count a healthy labeller as dead.
If the service itself dies, both notice their pipes close and exit.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)

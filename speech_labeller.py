"""Label a conversation's stored legs with who spoke when, and keep the labels in the store.

Runs after each file is recorded (in the job's worker thread), and over unlabelled
conversations on demand. Every leg of the conversation is read from its stored WAV, so the
second leg of a call, whenever and wherever it arrives, labels both legs together with the
crosstalk between them suppressed. Labels name the file versions they came from; when a file
changes while it is being labelled, the store refuses the stale labels and the job that
changed it labels again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import metrics
from metadata_speech import LegLabels
from metadata_tracker import MetadataTracker
from speech_activity import (
    DEFAULT_PARAMS,
    VadParams,
    analyse_wav,
    label_legs,
    overlap_seconds,
    provenance,
    quality_flags,
)

log = logging.getLogger(__name__)


def label_conversation(
    tracker: MetadataTracker, conversation_id: str, params: VadParams = DEFAULT_PARAMS
) -> bool:
    """Label every stored leg of one conversation; False if a file changed meanwhile."""
    legs = tracker.legs(conversation_id)
    if not legs:
        return False
    analyses = {label: analyse_wav(Path(path), params) for label, (path, _) in legs.items()}
    labels = label_legs(analyses, params)
    flags = quality_flags(analyses, labels)
    paired = len(legs) == 2
    overlap = overlap_seconds(*labels.values()) if paired else 0.0
    gained = tracker.save_labels(
        conversation_id,
        {
            label: LegLabels(
                file_sha256=legs[label][1],
                pcm_sha256=analyses[label].pcm_sha256,
                segments=labels[label],
                clipped_share=analyses[label].clipped_share,
                paired=paired,
            )
            for label in legs
        },
        overlap,
        flags,
        provenance(params),
    )
    if gained is None:
        log.info(
            "conversation=%s changed while it was labelled; its newer job labels it",
            conversation_id,
        )
        return False
    metrics.speech_stored(gained)
    return True


def label_unlabelled(tracker: MetadataTracker, params: VadParams = DEFAULT_PARAMS) -> int:
    """Label every conversation that has a file without labels; returns how many."""
    done = 0
    for conversation_id in tracker.unlabelled():
        try:
            done += label_conversation(tracker, conversation_id, params)
        except FileNotFoundError as exc:
            log.warning(
                "conversation=%s cannot be labelled: %s is missing", conversation_id, exc.filename
            )
    return done

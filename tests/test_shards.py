"""export_dataset.py --shards: WebDataset tar shards read back with webdataset's own reader (and
Hugging Face's "webdataset" builder), in a folder and in a bucket of the tests' own S3 server,
from WAVs stored in either; bounded shards, reruns that rewrite only what changed, erasure."""

from __future__ import annotations

import io
import json
import math
import os
import re
import tarfile
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import webdataset as wds
from pydantic import SecretStr
from support.cli_helpers import use_settings
from support.labelled_calls import Call, add_call
from support.s3_server import SECRET, S3Server
from support.stores import make_settings

from diarization_audio.cli.export import main
from diarization_audio.dataset.shard_plan import (
    Member,
    Shard,
    ShardBounds,
    index_bytes,
    plan_split,
    read_index,
)
from diarization_audio.objects import audio_place
from diarization_audio.settings import Settings
from diarization_audio.store.tracker import MetadataTracker

RATE = 16000
SPLITS = ("train", "development", "test")
# Five clean calls (one id with dots, which webdataset would cut its key at) and a flagged one.
CALLS: list[Call] = [
    ("call-a", "agent-1", 12.0, [(0.5, 4.0), (7.0, 9.0)], [(3.5, 6.5), (9.5, 11.5)]),
    ("call-b", "agent-1", 9.0, [(0.2, 3.0)], [(3.4, 8.5)]),
    ("call-c", None, 10.0, [(1.0, 5.0)], [(5.5, 9.5)]),
    ("call.d.v2", "agent-2", 8.0, [(0.5, 4.5)], [(5.0, 7.6)]),
    ("call-e", None, 7.0, [(0.5, 3.0)], [(3.5, 6.5)]),
    ("flat", None, 8.0, [(0.5, 7.5)], []),
]
CLEAN = sorted(cid for cid, *_ in CALLS if cid != "flat")
SHARD_FILE = re.compile(r"shard-(\d{6})\.(tar|jsonl)$")


def fill(settings: Settings, calls: list[Call]) -> None:
    tracker = MetadataTracker.from_settings(settings)
    for call in calls:
        add_call(tracker, settings, call)
    tracker.close()


@pytest.fixture
def stored(storage: Settings, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The calls stored and labelled, with their WAVs in a folder and again in a bucket; the
    settings reach the tests' S3 server either way (an export may go to a bucket)."""
    reach = {**s3_server.settings(), "aws_secret_access_key": SecretStr(SECRET)}
    settings = storage.model_copy(update=reach)
    fill(settings, CALLS)
    use_settings(monkeypatch, settings)
    return settings


@pytest.fixture
def in_folder(tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The calls stored and labelled, with their WAVs in a folder."""
    settings = make_settings(tmp_path / "collection", **s3_server.settings())
    fill(settings, CALLS)
    use_settings(monkeypatch, settings)
    return settings


def export(*args: str) -> None:
    assert main([*args, "--no-progress"]) == 0


class Output:
    """Where the shards go (a folder, or a bucket prefix of the tests' S3 server) and a local
    copy of what is there, to read back."""

    def __init__(self, tmp_path: Path, server: S3Server | None) -> None:
        self.server, self.tmp_path = server, tmp_path
        if server is None:
            self.target, self.bucket = str(tmp_path / "out"), ""
        else:
            self.bucket = server.new_bucket()
            # every write makes a new version: a rewrite shows even with the same bytes
            server.client().put_bucket_versioning(
                Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
            )
            self.target = f"s3://{self.bucket}/exports/calls"

    def local(self) -> Path:
        """The shards folder, downloaded first from a bucket."""
        if self.server is None:
            return Path(self.target) / "shards"
        copy = self.tmp_path / f"download-{os.urandom(4).hex()}"
        client = self.server.client()
        for key in self.server.keys(self.bucket, "exports/calls/shards/"):
            path = copy / key.removeprefix("exports/calls/shards/")
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(self.bucket, key, str(path))
        return copy

    def stamps(self) -> dict[str, object]:
        """Each shard file and the index by name -> what changes when it is written again
        (modification time and inode; an object's version)."""
        if self.server is None:
            root = Path(self.target) / "shards"
            return {
                p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_ino)
                for p in root.rglob("*")
                if p.is_file() and not p.name.startswith(".")
            }
        client = self.server.client()
        found: dict[str, object] = {}
        for key in self.server.keys(self.bucket, "exports/calls/shards/"):
            head = client.head_object(Bucket=self.bucket, Key=key)
            found[key.removeprefix("exports/calls/shards/")] = (head["ETag"], head["VersionId"])
        return found


@pytest.fixture(params=["folder", "bucket"])
def output(request: pytest.FixtureRequest, tmp_path: Path) -> Output:
    """Shards written into a folder, and again into a bucket."""
    server = request.getfixturevalue("s3_server") if request.param == "bucket" else None
    return Output(tmp_path, server)


def read_shards(shards: Path) -> dict[str, dict[str, Any]]:
    """Every sample of every shard, read with webdataset, by conversation id; each with the
    shard it came from. Fails on a conversation found twice."""
    tars = sorted(shards.glob("*/shard-*.tar"))
    samples: dict[str, dict[str, Any]] = {}
    # pipe:cat, as webdataset leaves a local file it opened for the garbage collector to close
    for sample in wds.WebDataset([f"pipe:cat {t}" for t in tars], shardshuffle=False):
        meta = json.loads(sample["json"])
        assert meta["conversation_id"] not in samples
        assert sample["__key__"] == meta["conversation_id"].replace(".", "%2E")
        url = sample["__url__"].removeprefix("pipe:cat ")
        samples[meta["conversation_id"]] = {**sample, "meta": meta, "tar": Path(url)}
    return samples


def wav_samples(data: bytes) -> tuple[int, npt.NDArray[np.int16]]:
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return wav.getframerate(), np.frombuffer(wav.readframes(wav.getnframes()), "<i2")


def labels_in_store(settings: Settings) -> dict[str, list[tuple[float, float, str]]]:
    tracker = MetadataTracker.from_settings(settings)
    try:
        return {
            c.conversation_id: sorted(
                (start, end, leg.speaker_label) for leg in c.legs for start, end in leg.segments
            )
            for c in tracker.stored_conversations()
        }
    finally:
        tracker.close()


def test_every_conversation_comes_back_once_with_its_audio_and_segments(
    stored: Settings, output: Output, tmp_path: Path
) -> None:
    """From WAVs in a folder or a bucket, into a folder or a bucket: webdataset reads every
    exported conversation back exactly once, in the shard of its split, with the loose
    export's mix (same samples), its RTTM, and the store's labels as its segments; each
    shard's manifest lists its samples in order, and the index its files' true sizes."""
    loose = tmp_path / "loose"
    export(str(loose))
    export(output.target, "--shards")
    shards = output.local()
    samples = read_shards(shards)
    assert sorted(samples) == CLEAN
    lists = {s: (loose / "lists" / f"{s}.txt").read_text().split() for s in SPLITS}
    labels = labels_in_store(stored)
    for cid, sample in samples.items():
        meta = sample["meta"]
        assert sample["wav"] == (loose / "audio" / f"{cid}.wav").read_bytes()
        rate, mixed = wav_samples(sample["wav"])
        assert rate == RATE and len(mixed) == meta["num_samples"] and np.abs(mixed).max() > 1000
        assert meta["duration"] == len(mixed) / RATE
        assert sample["rttm"] == (loose / "rttm" / f"{cid}.rttm").read_bytes()
        segments = sorted((s["start"], s["end"], s["speaker"]) for s in meta["segments"])
        assert segments == labels[cid] and {s[2] for s in segments} == {"agent", "customer"}
        assert sample["tar"].parent.name == meta["split"] and cid in lists[meta["split"]]
        assert [leg["speaker"] for leg in meta["legs"]] == ["agent", "customer"]
        assert meta["flags"] == "" and json.loads(meta["labeller"])["detector"]
    index = json.loads((shards / "index.json").read_text())
    listed = [c["id"] for shard in index["shards"] for c in shard["conversations"]]
    assert sorted(listed) == CLEAN
    for shard in index["shards"]:
        tar = shards / shard["tar"]
        assert tar.stat().st_size == shard["bytes"]
        with tarfile.open(tar) as opened:
            names = opened.getnames()
        keys = [c["id"].replace(".", "%2E") for c in shard["conversations"]]
        assert names == [f"{k}.{ext}" for k in keys for ext in ("json", "rttm", "wav")]
        lines = [json.loads(x) for x in (shards / shard["manifest"]).read_text().splitlines()]
        number = int(SHARD_FILE.search(shard["tar"])[1])  # type: ignore[index]
        assert [line["audio_filepath"] for line in lines] == [f"{k}.wav" for k in keys]
        assert [line["rttm_filepath"] for line in lines] == [f"{k}.rttm" for k in keys]
        assert [line["conversation_id"] for line in lines] == [
            c["id"] for c in shard["conversations"]
        ]
        assert all(line["shard_id"] == number and line["offset"] == 0 for line in lines)
        for line in lines:
            assert line["duration"] == round(
                samples[line["conversation_id"]]["meta"]["duration"], 3
            )


def test_hugging_face_loads_the_shards_with_its_webdataset_builder(
    in_folder: Settings, tmp_path: Path
) -> None:
    """datasets' "webdataset" builder reads the shards: every conversation, its audio as a WAV
    soundfile decodes at 16 kHz, its segments; a flagged call stored after five clean ones
    (the builder types each field from the first five) keeps its flag and its unknown SNR."""
    import datasets
    import soundfile

    out = tmp_path / "out"
    export(str(out), "--shards", "--split", "100/0/0", "--include-flagged")
    tars = sorted(str(p) for p in (out / "shards" / "train").glob("*.tar"))
    loaded = datasets.load_dataset(
        "webdataset", data_files={"train": tars}, cache_dir=str(tmp_path / "hf-cache")
    )["train"]
    loaded = loaded.cast_column("wav", datasets.Audio(decode=False))
    rows = {row["json"]["conversation_id"]: row for row in loaded}
    assert list(rows) == [*(cid for cid, *_ in CALLS)]
    for row in rows.values():
        data, rate = soundfile.read(io.BytesIO(row["wav"]["bytes"]))
        assert rate == RATE and data.ndim == 1 and len(data) == row["json"]["num_samples"]
        assert len(row["json"]["segments"]) >= 1
    flat = rows["flat"]["json"]
    assert "no_speech" in flat["flags"].split(",")
    assert [math.isnan(leg["snr_db"]) for leg in flat["legs"]] == [False, True]
    assert all(rows[cid]["json"]["flags"] == "" for cid in CLEAN)


def test_a_bound_on_conversations_or_bytes_gives_several_shards_within_it(
    in_folder: Settings, tmp_path: Path
) -> None:
    """--shard-size 2 holds shards to two conversations, 800KB to 800,000 bytes each; every
    conversation is still there once, and the index records the bound."""
    for size, bounds in (("2", (None, 2)), ("800KB", (800_000, None))):
        out = tmp_path / f"out-{size}"
        export(str(out), "--shards", "--split", "100/0/0", "--shard-size", size)
        tars = sorted((out / "shards" / "train").glob("shard-*.tar"))
        assert [t.name for t in tars] == [f"shard-{n:06d}.tar" for n in range(len(tars))]
        assert len(tars) >= 2
        samples = read_shards(out / "shards")
        assert sorted(samples) == CLEAN
        most_bytes, most_conversations = bounds
        for tar in tars:
            held = [s for s in samples.values() if s["tar"] == tar]
            assert held, tar
            assert most_conversations is None or len(held) <= most_conversations
            assert most_bytes is None or tar.stat().st_size <= most_bytes
        index = json.loads((out / "shards" / "index.json").read_text())
        assert index["bounds"] == {"bytes": most_bytes, "conversations": most_conversations}
    assert len(list((tmp_path / "out-800KB" / "shards" / "train").glob("*.tar"))) < 5


def test_a_rerun_rewrites_only_the_shards_whose_conversations_changed(
    in_folder: Settings, output: Output, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing changed: nothing is written. A new conversation fills the last shard, which
    alone is written. An erased one leaves its shard (written again without it), the index
    and the manifests, and the summary says it was erased. A shard left empty goes and the
    last shard takes its number."""
    args = [output.target, "--shards", "--split", "100/0/0", "--shard-size", "2"]
    export(*args)
    first = output.stamps()
    names = ["train/shard-000000", "train/shard-000001", "train/shard-000002"]
    assert sorted(first) == sorted(
        ["index.json", *(f"{n}.{e}" for n in names for e in ("tar", "jsonl"))]
    )
    capsys.readouterr()

    export(*args)
    assert output.stamps() == first
    assert ": shards 0 written, 0 renumbered, 3 unchanged, 0 deleted; 0 removed; left out 1" in (
        capsys.readouterr().out
    )

    tracker = MetadataTracker.from_settings(in_folder)
    add_call(tracker, in_folder, ("call-f", None, 6.0, [(0.5, 2.5)], [(3.0, 5.5)]))
    tracker.close()
    export(output.target, "--shards", "--split", "100/0/0")  # the bound stays the one recorded
    second = output.stamps()
    changed = sorted(name for name in second if second[name] != first.get(name))
    assert changed == ["index.json", "train/shard-000002.jsonl", "train/shard-000002.tar"]
    assert ": shards 1 written, 0 renumbered, 2 unchanged, 0 deleted; 0 removed;" in (
        capsys.readouterr().out
    )
    samples = read_shards(output.local())
    assert sorted(samples) == sorted([*CLEAN, "call-f"])
    assert samples["call-f"]["tar"].name == "shard-000002.tar"

    index = json.loads((output.local() / "index.json").read_text())
    in_first = [c["id"] for c in index["shards"][0]["conversations"]]
    assert len(in_first) == 2
    tracker = MetadataTracker.from_settings(in_folder)
    tracker.erase(in_first[0], "consent withdrawn", audio_place(in_folder))
    tracker.close()
    export(*args)
    third = output.stamps()
    changed = sorted(name for name in third if third[name] != second[name])
    assert changed == ["index.json", "train/shard-000000.jsonl", "train/shard-000000.tar"]
    assert ": shards 1 written, 0 renumbered, 2 unchanged, 0 deleted; 1 removed (1 erased);" in (
        capsys.readouterr().out
    )
    shards = output.local()
    samples = read_shards(shards)
    assert in_first[0] not in samples and in_first[1] in samples
    assert in_first[0] not in (shards / "index.json").read_text()
    assert all(in_first[0] not in p.read_text() for p in shards.glob("*/*.jsonl"))

    last = (shards / "train" / "shard-000002.tar").read_bytes()
    tracker = MetadataTracker.from_settings(in_folder)
    tracker.erase(in_first[1], "consent withdrawn", audio_place(in_folder))
    tracker.close()
    export(*args)
    assert ": shards 0 written, 1 renumbered, 1 unchanged, 1 deleted; 1 removed (1 erased);" in (
        capsys.readouterr().out
    )
    shards = output.local()
    assert sorted(p.name for p in (shards / "train").iterdir()) == [
        "shard-000000.jsonl", "shard-000000.tar", "shard-000001.jsonl", "shard-000001.tar",
    ]  # fmt: skip
    assert (shards / "train" / "shard-000000.tar").read_bytes() == last
    manifest = (shards / "train" / "shard-000000.jsonl").read_text().splitlines()
    assert {json.loads(line)["shard_id"] for line in manifest} == {0}
    assert sorted(read_shards(shards)) == sorted({*CLEAN, "call-f"} - set(in_first))


def test_an_export_that_fails_midway_leaves_its_shard_to_be_written_again(
    in_folder: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shard that cannot be built (a leg's file is missing) stops the export with one line;
    the index marks that shard as being written, the other shards and no temporary file are
    left; the next run writes it, and removes a shard file the index does not list."""
    out = tmp_path / "out"
    args = [str(out), "--shards", "--split", "100/0/0", "--shard-size", "2", "--no-progress"]
    assert main(args) == 0
    train = out / "shards" / "train"
    before = {p.name: p.stat().st_mtime_ns for p in train.iterdir()}
    tracker = MetadataTracker.from_settings(in_folder)
    add_call(tracker, in_folder, ("call-f", None, 6.0, [(0.5, 2.5)], [(3.0, 5.5)]))
    tracker.close()
    leg = Path(in_folder.audio_storage_dir) / "call-e_agent.wav"  # shares the last shard
    leg.rename(leg.with_suffix(".away"))
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot export: ") and "call-e_agent.wav" in err
    assert err.count("\n") == 1
    assert {p.name: p.stat().st_mtime_ns for p in train.iterdir()} == before
    index = json.loads((out / "shards" / "index.json").read_text())
    assert [s["fingerprint"] is None for s in index["shards"]] == [False, False, True]

    leg.with_suffix(".away").rename(leg)
    (train / "shard-000007.tar").write_bytes(b"left by someone")
    assert main(args) == 0
    assert ": shards 1 written, 0 renumbered, 2 unchanged, 1 deleted; 0 removed;" in (
        capsys.readouterr().out
    )
    assert sorted(p.name for p in train.iterdir()) == [
        f"shard-00000{n}.{e}" for n in range(3) for e in ("jsonl", "tar")
    ]
    samples = read_shards(out / "shards")
    assert sorted(samples) == sorted([*CLEAN, "call-f"])
    assert samples["call-f"]["tar"].name == "shard-000002.tar"
    index = json.loads((out / "shards" / "index.json").read_text())
    assert all(s["fingerprint"] for s in index["shards"])


def test_every_export_in_a_folder_loses_an_erased_conversation(
    in_folder: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder holding loose files and shards: the next run, of either kind, brings both up
    to date, so an erased conversation leaves the loose files, their manifests and its shard,
    and each closing line says so."""
    out = tmp_path / "out"
    export(str(out))
    export(str(out), "--shards")
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2].startswith(f"exported 5 conversations to {out} (")
    assert printed[-1].startswith(f"exported 5 conversations to {out}/shards in ")
    tracker = MetadataTracker.from_settings(in_folder)
    tracker.erase("call-b", "consent withdrawn", audio_place(in_folder))
    tracker.close()
    export(str(out))
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and all(" 1 removed (1 erased); " in line for line in printed)
    assert "call-b" not in read_shards(out / "shards") and not any(out.rglob("call-b*"))
    texts = [p for p in out.rglob("*") if p.is_file() and p.suffix in {".txt", ".json", ".jsonl"}]
    assert texts and [p for p in texts if "call-b" in p.read_text()] == []


def test_the_command_line_refuses_what_it_cannot_do(
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 2 and one line for a bucket without --shards, --shard-size alone or a bad size;
    exit 1 and one line for a bucket that is not there or a folder another export holds."""
    from filelock import FileLock

    use_settings(monkeypatch, make_settings(tmp_path / "store", **s3_server.settings()))
    bucket = s3_server.new_bucket()
    assert main([f"s3://{bucket}/set", "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        f"error: s3://{bucket}/set is a bucket, which takes only --shards "
        "(loose files need a folder)\n"
    )
    assert main([str(tmp_path / "out"), "--shard-size", "2"]) == 2
    assert capsys.readouterr().err == "error: --shard-size goes with --shards\n"
    for bad in ("1XB", "0", "1.5", "2,3", "1GB,2GB", ""):
        with pytest.raises(SystemExit) as exited:
            main([str(tmp_path / "out"), "--shards", "--shard-size", bad])
        assert exited.value.code == 2
        assert "--shard-size: give bytes with a unit" in capsys.readouterr().err
    assert s3_server.keys(bucket) == {} and not (tmp_path / "out").exists()

    assert main(["s3://no-such-bucket/set", "--shards", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: object storage: no bucket 'no-such-bucket' (")
    assert err.count("\n") == 1
    busy = tmp_path / "busy"
    busy.mkdir()
    with FileLock(busy / ".export.lock"):
        assert main([str(busy), "--shards", "--no-progress"]) == 1
    assert capsys.readouterr().err == (
        f"error: another export is writing to {busy}; try again when it ends\n"
    )
    assert sorted(p.name for p in busy.iterdir()) == [".export.lock"]


def member(cid: str, size: int = 100_000, fingerprint: str = "f") -> Member:
    return Member(cid, fingerprint, size, 1.0)


def test_planning_keeps_shards_spills_what_no_longer_fits_and_closes_gaps() -> None:
    """Unchanged shards keep their conversations; a lowered bound sends a shard's tail to the
    end; an emptied shard takes the last one's number; a conversation listed twice (an
    interrupted run) is placed once."""
    bounds = ShardBounds(None, 3)
    old = [Shard("train", 0, (member("a"), member("b"), member("c"))),
           Shard("train", 1, (member("d"), member("e"))),
           Shard("train", 2, (member("f"), member("a")))]  # fmt: skip
    wanted = [member(c) for c in "abcdefg"]

    def plan(bounds: ShardBounds, wanted: list[Member]) -> list[list[str]]:
        return [
            [m.conversation_id for m in s.members] for s in plan_split("train", old, wanted, bounds)
        ]

    assert plan(bounds, wanted) == [["a", "b", "c"], ["d", "e"], ["f", "g"]]
    assert plan(ShardBounds(None, 2), wanted) == [["a", "b"], ["d", "e"], ["f", "c"], ["g"]]
    gone = [m for m in wanted if m.conversation_id not in "abc"]
    assert plan(bounds, gone) == [["f", "g"], ["d", "e"]]
    assert plan(ShardBounds(250_000, None), wanted) == [
        ["a", "b"], ["d", "e"], ["f", "c"], ["g"],
    ]  # fmt: skip


def test_the_index_reads_back_what_was_written_and_nothing_doubtful() -> None:
    """An index reads back as written (a shard being written stays marked so); a damaged one,
    another format or a shard listed twice reads as no index, so every shard is written again."""
    bounds = ShardBounds(500_000_000, None)
    shards = [Shard("train", 0, (member("a", 2048, "x"), member("b.c", 4096, "y")), 10240),
              Shard("test", 0, (member("d"),), 102400, complete=False)]  # fmt: skip
    assert read_index(index_bytes(shards, bounds)) == (shards, bounds)
    document = json.loads(index_bytes(shards, bounds))
    twice = {**document, "shards": [document["shards"][0]] * 2}
    for damaged in (b"{", b"[]", json.dumps({**document, "format": 2}).encode(),
                    json.dumps(twice).encode(), None):  # fmt: skip
        assert read_index(damaged) == ([], None)

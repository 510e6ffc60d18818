"""Conversion options of ``POST /upload``: the form fields → ConversionOptions rules, and the
gateway against the real auth and storage servers: options before or after the file are
stored in the job and published; every bad value is a 400 naming the field, with nothing
stored."""

from __future__ import annotations

import io
import re
import shlex
from collections.abc import Callable
from typing import Any

import pytest
from video2mp3.events.v1 import events_pb2
from video2mp3.storage.v1 import options_pb2
from werkzeug.datastructures import FileStorage

from gateway.errors import ApiError
from gateway.options import FIELDS, parse, parse_time, to_json
from testing.infra import Infra
from tests.fixtures.storage import StorageHandle
from tests.fixtures.storage_gateway import MediaUser
from tests.test_storage_gateway import assert_error, leftovers, requested_messages


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("75.5", 75.5),
        ("0", 0.0),
        ("01:15", 75.0),
        ("1:15.250", 75.25),
        ("01:00:00", 3600.0),
        ("2:03:04.5", 7384.5),
    ],
)
def test_times(text: str, seconds: float) -> None:
    assert parse_time("start", text) == pytest.approx(seconds)


def test_every_option_parses() -> None:
    fields = {
        "bitrate": "128",
        "channels": "mono",
        "sample_rate": "32000",
        "start": "1:00",
        "end": "90.5",
        "track": "1",
        "normalize": "true",
        "title": " Song ",
        "artist": "Ann",
        "album": "Best",
        "cover": "frame",
    }
    options = parse(fields)
    assert options == options_pb2.ConversionOptions(
        bitrate_kbps=128,
        channels=options_pb2.CHANNEL_MODE_MONO,
        sample_rate=32000,
        start_seconds=60.0,
        end_seconds=90.5,
        track=1,
        normalize=True,
        title="Song",
        artist="Ann",
        album="Best",
        cover=options_pb2.COVER_MODE_FRAME,
    )
    assert to_json(options) == {
        "bitrate": 128,
        "channels": "mono",
        "sample_rate": 32000,
        "start": 60.0,
        "end": 90.5,
        "track": 1,
        "normalize": True,
        "title": "Song",
        "artist": "Ann",
        "album": "Best",
        "cover": "frame",
    }
    assert parse({"quality": "v0"}).vbr_quality == 0
    assert to_json(parse({"quality": "V9"})) == {"quality": "V9"}
    assert parse({}) == options_pb2.ConversionOptions()


BAD = [
    ({"bitrate": "100"}, "bitrate"),
    ({"bitrate": "fast"}, "bitrate"),
    ({"quality": "V10"}, "quality"),
    ({"quality": "2"}, "quality"),
    ({"bitrate": "128", "quality": "V2"}, "bitrate"),
    ({"channels": "5.1"}, "channels"),
    ({"sample_rate": "22050"}, "sample_rate"),
    ({"start": "-3"}, "start"),
    ({"start": "1:75"}, "start"),
    ({"end": "soon"}, "end"),
    ({"start": "10", "end": "5"}, "end"),
    ({"track": "-1"}, "track"),
    ({"track": "first"}, "track"),
    ({"normalize": "maybe"}, "normalize"),
    ({"title": "x" * 251}, "title"),
    ({"artist": "x" * 251}, "artist"),
    ({"album": "x" * 251}, "album"),
    ({"cover": "big"}, "cover"),
    ({"speed": "2"}, "speed"),
]


@pytest.mark.parametrize(("fields", "named"), BAD)
def test_bad_values_name_their_field(fields: dict[str, str], named: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse(fields)
    assert caught.value.status == 400
    assert named in caught.value.message


def upload(
    user: MediaUser, before: dict[str, str], after: dict[str, str], data: bytes = b"video" * 100
) -> Any:
    form: dict[str, Any] = dict(before)
    form["file"] = FileStorage(io.BytesIO(data), "clip.mp4")
    form.update(after)
    return user.http.post("/upload", headers=user.headers, data=form, content_type="multipart/form-data")


@pytest.mark.parametrize("where", ["before", "after", "both"])
def test_options_in_any_order_reach_the_job_and_the_event(
    media_user: Callable[[], MediaUser], infra: Infra, where: str
) -> None:
    user = media_user()
    first = {"bitrate": "96", "channels": "mono", "start": "0:01"}
    second = {"end": "3.5", "title": "Ünïcode title", "cover": "none"}
    if where == "before":
        response = upload(user, {**first, **second}, {})
    elif where == "after":
        response = upload(user, {}, {**first, **second})
    else:
        response = upload(user, first, second)
    assert response.status_code == 202, response.get_json()
    expected = {
        "bitrate": 96,
        "channels": "mono",
        "start": 1.0,
        "end": 3.5,
        "title": "Ünïcode title",
        "cover": "none",
    }
    assert response.get_json()["options"] == expected
    job_id = response.get_json()["job_id"]
    job = user.http.get(f"/jobs/{job_id}", headers=user.headers).get_json()
    assert job["options"] == expected and "source" not in job
    event = events_pb2.ConversionRequested()
    event.ParseFromString(requested_messages(infra)[job_id][1])
    assert event.options.bitrate_kbps == 96 and event.options.end_seconds == 3.5
    assert event.options.title == "Ünïcode title"


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize(("fields", "named"), BAD)
def test_a_bad_option_is_a_400_and_nothing_is_stored(
    media_user: Callable[[], MediaUser],
    storage_service: StorageHandle,
    where: str,
    fields: dict[str, str],
    named: str,
) -> None:
    user = media_user()
    # Compared with before: user ids of other tests' auth databases may match this one's.
    before = leftovers(storage_service, user.id), storage_service.orphan_chunks()
    response = upload(user, fields, {}) if where == "before" else upload(user, {}, fields)
    body = assert_error(response, 400)
    assert named in body["message"]
    assert (leftovers(storage_service, user.id), storage_service.orphan_chunks()) == before


def test_repeated_fields_and_a_second_file_are_refused(
    media_user: Callable[[], MediaUser], storage_service: StorageHandle
) -> None:
    user = media_user()
    before = leftovers(storage_service, user.id)
    boundary = "bndry"

    def part(name: str, value: bytes, filename: str | None = None) -> bytes:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        return f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"

    for parts in (
        [part("bitrate", b"128"), part("file", b"v" * 500, "a.mp4"), part("bitrate", b"128")],
        [part("file", b"v" * 500, "a.mp4"), part("file", b"w" * 500, "b.mp4")],
        [part("title", b"\xff\xfe"), part("file", b"v" * 500, "a.mp4")],
    ):
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        response = user.http.post(
            "/upload",
            headers=user.headers,
            data=body,
            content_type=f"multipart/form-data; boundary={boundary}",
        )
        assert_error(response, 400)
    assert leftovers(storage_service, user.id) == before


def test_the_readme_examples_are_valid_and_cover_every_option() -> None:
    """`make options` prints this README section: its curl examples must stay true."""
    from testing.processes import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- options:start -->", 1)[1].split("<!-- options:end -->", 1)[0]
    examples = section.split("```sh", 1)[1].split("```", 1)[0].replace("\\\n", " ").splitlines()
    seen: set[str] = set()
    for line in filter(None, examples):
        words = shlex.split(line)
        pairs = [words[i + 1].split("=", 1) for i, word in enumerate(words) if word == "-F"]
        fields = {name: value for name, value in pairs if name != "file"}
        assert fields, line
        parse(fields)
        seen |= fields.keys()
    assert seen == set(FIELDS)
    table = " ".join(line.split("|")[1] for line in section.splitlines() if line.startswith("| `"))
    assert set(re.findall(r"`([a-z_]+)`", table)) == set(FIELDS)


def test_the_openapi_document_lists_every_option() -> None:
    from gateway import openapi

    upload_form = openapi.document()["paths"]["/upload"]["post"]["requestBody"]["content"]
    fields = set(upload_form["multipart/form-data"]["schema"]["properties"]) - {"file"}
    assert fields == set(FIELDS)
    options = openapi.document()["components"]["schemas"]["Options"]["properties"]
    assert set(options) == set(FIELDS)

"""A local AWS HealthImaging for tests: the REST paths, JSON shapes and blobs boto3 expects.

It speaks the wire format of the ``medical-imaging`` service (restJson1): the operations the
HealthImaging source calls, with their real paths, a gzip-compressed metadata document and
frames as ``application/octet-stream``; errors carry ``x-amzn-ErrorType`` as AWS sends it. Image
sets are built from real DICOM files (:meth:`FakeHealthImaging.add_image_set`): the metadata in
HealthImaging's Patient / Study / Series / Instances layout, the frames as the files hold them
(or as a test re-encodes them). Requests are not signature-checked.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from tests.servers.http import serve_in_thread

_PATIENT = {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "IssuerOfPatientID",
            "OtherPatientIDsSequence", "PatientAge", "PatientWeight", "PatientSize"}
_STUDY = {"StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
          "StudyDescription", "ReferringPhysicianName"}
_SERIES = {"SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate",
           "SeriesTime", "BodyPartExamined", "Manufacturer", "FrameOfReferenceUID"}
_BINARY = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_PIXELS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


def element_json(elem: DataElement) -> Any:
    """An element's value as HealthImaging writes it in the metadata document."""
    if elem.VR == "SQ":
        return [dataset_json(item)[0] for item in elem.value]
    if elem.value is None or elem.value == "" or elem.value == b"":
        return None
    if elem.VR in _BINARY:
        return base64.b64encode(bytes(elem.value)).decode()
    if elem.VM > 1:
        return [_scalar(v) for v in elem.value]
    return _scalar(elem.value)


def _scalar(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return str(value)


def dataset_json(ds: Dataset) -> tuple[dict[str, Any], dict[str, str]]:
    """(attributes by keyword, VRs of private attributes keyed by their tag)."""
    attrs: dict[str, Any] = {}
    vrs: dict[str, str] = {}
    for elem in ds:
        if int(elem.tag) in _PIXELS:
            continue
        key = elem.keyword or f"{int(elem.tag):08X}"
        if not elem.keyword:
            vrs[key] = elem.VR
        attrs[key] = element_json(elem)
    return attrs, vrs


@dataclass
class ImageSet:
    metadata: dict[str, Any]
    frames: dict[str, bytes]
    version: int = 1
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    updated: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


@dataclass
class ImportJob:
    job_id: str
    submitted: datetime
    ended: datetime


class FakeHealthImaging:
    """The state behind the server: datastores of image sets, and import jobs."""

    def __init__(self) -> None:
        self.datastores: dict[str, dict[str, ImageSet]] = {}
        self.jobs: dict[str, ImportJob] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def add_image_set(self, datastore: str, instances: list[tuple[Dataset, list[bytes], str]],
                      image_set_id: str | None = None) -> str:
        """An image set of ``instances``: (header, frame blobs, stored transfer syntax)."""
        image_set_id = image_set_id or uuid.uuid4().hex
        first = instances[0][0]
        doc: dict[str, Any] = {"SchemaVersion": "1.1", "DatastoreID": datastore,
                               "ImageSetID": image_set_id, "Patient": {"DICOM": {}},
                               "Study": {"DICOM": {}, "Series": {}}}
        frames: dict[str, bytes] = {}
        for ds, blobs, syntax in instances:
            attrs, vrs = dataset_json(ds)
            meta = getattr(ds, "file_meta", None)
            if meta is not None:  # HealthImaging keeps the original file meta in the instance
                attrs.update(dataset_json(meta)[0])
            levels: dict[str, dict[str, Any]] = {"p": {}, "st": {}, "se": {}, "i": {}}
            for key, value in attrs.items():
                level = ("p" if key in _PATIENT else "st" if key in _STUDY
                         else "se" if key in _SERIES else "i")
                levels[level][key] = value
            doc["Patient"]["DICOM"].update(levels["p"])
            doc["Study"]["DICOM"].update(levels["st"])
            series = doc["Study"]["Series"].setdefault(
                str(ds.get("SeriesInstanceUID", first.SeriesInstanceUID)),
                {"DICOM": levels["se"], "Instances": {}})
            ids = [uuid.uuid4().hex for _ in blobs]
            frames.update(zip(ids, blobs, strict=True))
            series["Instances"][str(ds.SOPInstanceUID)] = {
                "DICOM": levels["i"], "DICOMVRs": vrs, "StoredTransferSyntaxUID": syntax,
                "ImageFrames": [{"ID": i, "FrameSizeInBytes": len(b)}
                                for i, b in zip(ids, blobs, strict=True)]}
        with self.lock:
            self.datastores.setdefault(datastore, {})[image_set_id] = ImageSet(doc, frames)
        return image_set_id

    def touch(self, datastore: str, image_set_id: str) -> None:
        """An update: a new version, a new updatedAt."""
        with self.lock:
            image_set = self.datastores[datastore][image_set_id]
            image_set.version += 1
            image_set.updated = datetime.now(timezone.utc)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHealthImaging
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.fake.requests.append(f"{method} {parts.path}")
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._error(400, "ValidationException", "the body is not JSON")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        routes: list[tuple[str, str, Callable[..., None]]] = [
            ("POST", r"/datastore/([^/]+)/imageSet/([^/]+)/getImageSetMetadata", self._metadata),
            ("POST", r"/datastore/([^/]+)/imageSet/([^/]+)/getImageFrame", self._frame),
            ("POST", r"/datastore/([^/]+)/imageSet/([^/]+)/getImageSet", self._image_set),
            ("POST", r"/datastore/([^/]+)/searchImageSets", self._search),
            ("GET", r"/getDICOMImportJob/datastore/([^/]+)/job/([^/]+)", self._job),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, parts.path)
            if match and verb == method:
                return handler(*match.groups(), body=body, query=query)
        return self._error(404, "ResourceNotFoundException", f"no route {method} {parts.path}")

    def _image_set_or_404(self, datastore: str, image_set_id: str) -> ImageSet | None:
        found = self.fake.datastores.get(datastore, {}).get(image_set_id)
        if found is None:
            self._error(404, "ResourceNotFoundException", f"image set {image_set_id} not found")
        return found

    def _metadata(self, datastore: str, image_set_id: str, **_: Any) -> None:
        image_set = self._image_set_or_404(datastore, image_set_id)
        if image_set is not None:
            blob = gzip.compress(json.dumps(image_set.metadata).encode())
            self._send(200, blob, "application/json", {"Content-Encoding": "gzip"})

    def _frame(self, datastore: str, image_set_id: str, body: dict[str, Any], **_: Any) -> None:
        image_set = self._image_set_or_404(datastore, image_set_id)
        if image_set is None:
            return
        frame_id = body.get("imageFrameId")
        if not isinstance(frame_id, str):
            return self._error(400, "ValidationException", "imageFrameId is required")
        blob = image_set.frames.get(frame_id)
        if blob is None:
            return self._error(404, "ResourceNotFoundException", f"frame {frame_id} not found")
        self._send(200, blob, "application/octet-stream")

    def _image_set(self, datastore: str, image_set_id: str, **_: Any) -> None:
        image_set = self._image_set_or_404(datastore, image_set_id)
        if image_set is not None:
            self._json({"datastoreId": datastore, "imageSetId": image_set_id,
                        "versionId": str(image_set.version), "imageSetState": "ACTIVE",
                        "imageSetWorkflowStatus": "CREATED" if image_set.version == 1
                        else "UPDATED", "createdAt": image_set.created.timestamp(),
                        "updatedAt": image_set.updated.timestamp(), "isPrimary": True})

    def _search(self, datastore: str, body: dict[str, Any], query: dict[str, str]) -> None:
        criteria = body.get("searchCriteria") or {}
        low = datetime.min.replace(tzinfo=timezone.utc)
        high = datetime.max.replace(tzinfo=timezone.utc)
        for flt in criteria.get("filters") or []:
            values = [v.get("updatedAt") for v in flt.get("values", [])]
            if flt.get("operator") != "BETWEEN" or len(values) != 2 or None in values:
                return self._error(400, "ValidationException", "only updatedAt BETWEEN here")
            low, high = (datetime.fromtimestamp(float(v), timezone.utc) for v in values)
        found = sorted(((i, s) for i, s in self.fake.datastores.get(datastore, {}).items()
                        if low <= s.updated <= high), key=lambda p: (p[1].updated, p[0]))
        start = int(query.get("nextToken") or 0)
        size = int(query.get("maxResults") or 50)
        page = found[start:start + size]
        answer: dict[str, Any] = {"imageSetsMetadataSummaries": [
            {"imageSetId": i, "version": s.version, "createdAt": s.created.timestamp(),
             "updatedAt": s.updated.timestamp(), "isPrimary": True,
             "DICOMTags": {"DICOMStudyInstanceUID":
                           s.metadata["Study"]["DICOM"].get("StudyInstanceUID", "")}}
            for i, s in page]}
        if start + size < len(found):
            answer["nextToken"] = str(start + size)
        self._json(answer)

    def _job(self, datastore: str, job_id: str, **_: Any) -> None:
        job = self.fake.jobs.get(job_id)
        if job is None:
            return self._error(404, "ResourceNotFoundException", f"job {job_id} not found")
        self._json({"jobProperties": {
            "jobId": job_id, "jobName": "test", "jobStatus": "COMPLETED",
            "datastoreId": datastore, "dataAccessRoleArn": "arn:aws:iam::111122223333:role/x",
            "submittedAt": job.submitted.timestamp(), "endedAt": job.ended.timestamp(),
            "inputS3Uri": "s3://in/", "outputS3Uri": "s3://out/"}})

    def _json(self, payload: dict[str, Any]) -> None:
        self._send(200, json.dumps(payload).encode(), "application/json")

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, json.dumps({"message": message}).encode(), "application/json",
                   {"x-amzn-ErrorType": code})

    def _send(self, status: int, data: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", uuid.uuid4().hex)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def running_healthimaging() -> Iterator[tuple[str, FakeHealthImaging]]:
    """(endpoint URL, state) of a server on a free loopback port, stopped on exit."""
    fake = FakeHealthImaging()
    with serve_in_thread(_Handler, fake) as url:
        yield url, fake

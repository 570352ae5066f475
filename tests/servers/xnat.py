"""A local XNAT for tests: the REST calls the ``xnat`` package (xnatpy) makes, nothing more.

``xnat.connect`` probes the server root, logs in (``PUT /data/services/auth``, then
``GET /data/auth``), asks the version (``/data/version``, then ``/xapi/siteConfig/buildInfo``),
and builds its object model from the server's schemas (``/xapi/schemas``, ``/xapi/schemas/xnat``);
listings are ``?format=json`` ResultSets, objects ``{"items": [...]}`` documents, files a
listing with digests plus one GET per file. The schema served is a small XSD of our own with
the types a project of MR/CT sessions needs, laid out as XNAT's ``xnat.xsd`` lays them out.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.servers.http import serve_in_thread

_NS = ('xmlns:xnat="http://nrg.wustl.edu/xnat" xmlns:xdat="http://nrg.wustl.edu/xdat" '
       'xmlns:xs="http://www.w3.org/2001/XMLSchema"')


def _listing(name: str, item: str, type_: str) -> str:
    return (f'<xs:element name="{name}" minOccurs="0"><xs:complexType><xs:sequence>'
            f'<xs:element name="{item}" type="{type_}" minOccurs="0" maxOccurs="unbounded"/>'
            f'</xs:sequence></xs:complexType></xs:element>')


def _ext(name: str, base: str, body: str = "") -> str:
    return (f'<xs:complexType name="{name}"><xs:complexContent><xs:extension base="{base}">'
            f'{body}</xs:extension></xs:complexContent></xs:complexType>')


def _ident(field: str) -> str:
    return f'<xs:annotation><xs:appinfo><xdat:element displayIdentifiers="{field}"/>' \
           f'</xs:appinfo></xs:annotation>'


XNAT_XSD = f"""<?xml version="1.0" encoding="UTF-8"?>
<xs:schema targetNamespace="http://nrg.wustl.edu/xnat" {_NS} elementFormDefault="qualified"
 attributeFormDefault="unqualified">
<xs:element name="Project" type="xnat:projectData"/>
<xs:element name="Subject" type="xnat:subjectData"/>
<xs:element name="MRSession" type="xnat:mrSessionData"/>
<xs:element name="CTSession" type="xnat:ctSessionData"/>
<xs:element name="MRScan" type="xnat:mrScanData"/>
<xs:element name="CTScan" type="xnat:ctScanData"/>
<xs:element name="ResourceCatalog" type="xnat:resourceCatalog"/>
<xs:complexType name="projectData"><xs:sequence>
 <xs:element name="name" type="xs:string" minOccurs="0"/>
 <xs:element name="description" type="xs:string" minOccurs="0"/>
</xs:sequence><xs:attribute name="ID" type="xs:string" use="required"/></xs:complexType>
<xs:complexType name="subjectData">{_ident("label")}<xs:sequence>
 <xs:element name="fields" minOccurs="0"><xs:complexType><xs:sequence minOccurs="0">
  <xs:element name="field" minOccurs="0" maxOccurs="unbounded">{_ident("name")}
   <xs:complexType><xs:simpleContent><xs:extension base="xs:string">
    <xs:attribute name="name" type="xs:string"/></xs:extension></xs:simpleContent>
   </xs:complexType></xs:element></xs:sequence></xs:complexType></xs:element>
 {_listing("experiments", "experiment", "xnat:subjectAssessorData")}
</xs:sequence>
<xs:attribute name="ID" type="xs:string" use="required"/>
<xs:attribute name="project" type="xs:string"/>
<xs:attribute name="label" type="xs:string"/></xs:complexType>
<xs:complexType name="experimentData">{_ident("label")}<xs:sequence>
 <xs:element name="date" type="xs:date" minOccurs="0"/>
</xs:sequence>
<xs:attribute name="ID" type="xs:string" use="required"/>
<xs:attribute name="project" type="xs:string"/>
<xs:attribute name="label" type="xs:string"/></xs:complexType>
{_ext("subjectAssessorData", "xnat:experimentData",
      '<xs:sequence><xs:element name="subject_ID" type="xs:string" minOccurs="0"/>'
      '</xs:sequence>')}
{_ext("imageSessionData", "xnat:subjectAssessorData",
      '<xs:sequence><xs:element name="modality" type="xs:string" minOccurs="0"/>'
      + _listing("scans", "scan", "xnat:imageScanData") + '</xs:sequence>')}
{_ext("mrSessionData", "xnat:imageSessionData")}
{_ext("ctSessionData", "xnat:imageSessionData")}
<xs:complexType name="imageScanData">{_ident("ID")}<xs:sequence>
 <xs:element name="series_description" type="xs:string" minOccurs="0"/>
 <xs:element name="quality" type="xs:string" minOccurs="0"/>
 <xs:element name="file" type="xnat:abstractResource" minOccurs="0" maxOccurs="unbounded"/>
</xs:sequence>
<xs:attribute name="ID" type="xs:string" use="required"/>
<xs:attribute name="type" type="xs:string"/>
<xs:attribute name="UID" type="xs:string"/>
<xs:attribute name="project" type="xs:string"/>
<xs:attribute name="image_session_ID" type="xs:string"/></xs:complexType>
{_ext("mrScanData", "xnat:imageScanData")}
{_ext("ctScanData", "xnat:imageScanData")}
<xs:complexType name="abstractResource">{_ident("label")}
<xs:attribute name="label" type="xs:string"/>
<xs:attribute name="file_count" type="xs:integer"/>
<xs:attribute name="file_size" type="xs:integer"/></xs:complexType>
{_ext("resource", "xnat:abstractResource",
      '<xs:attribute name="URI" type="xs:string"/><xs:attribute name="format" type="xs:string"/>')}
{_ext("resourceCatalog", "xnat:resource")}
</xs:schema>
"""


_SEARCHABLE = ("xnat:projectData", "xnat:subjectData", "xnat:mrSessionData",
               "xnat:ctSessionData", "xnat:mrScanData", "xnat:ctScanData")


@dataclass
class Scan:
    id: str
    type: str
    files: dict[str, bytes]
    xsi_type: str = "xnat:mrScanData"
    resource: str = "DICOM"
    resource_id: str = field(default_factory=lambda: str(uuid.uuid4().int % 10**6))


@dataclass
class Experiment:
    id: str
    label: str
    scans: list[Scan]
    xsi_type: str = "xnat:mrSessionData"


@dataclass
class Subject:
    id: str
    label: str
    experiments: list[Experiment]
    fields: dict[str, str] = field(default_factory=dict)


class FakeXnat:
    """Projects of subjects, one user; ``downloads`` counts file GETs by path."""

    def __init__(self, user: str = "medops", password: str = "secret") -> None:
        self.user, self.password = user, password
        self.projects: dict[str, list[Subject]] = {}
        self.tokens: set[str] = set()
        self.downloads: dict[str, int] = {}
        self.requests: list[str] = []


def _result_set(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}}


def _item(xsi_type: str, fields: dict[str, Any],
          children: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"items": [{"meta": {"xsi:type": xsi_type, "isHistory": False},
                       "data_fields": fields, "children": children or []}]}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeXnat
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path).replace("/data/archive/", "/data/").rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        self.fake.requests.append(f"{method} {path}")
        if method == "PUT" and path == "/data/services/auth":
            return self._login(body)
        if path == "/":
            return self._send(200, b"<html><body>XNAT</body></html>", "text/html")
        if not self._authorised():
            return self._send(401, b"<h3>Login attempt failed. Please try again.</h3>",
                              "text/html")
        if path == "/data/JSESSION":
            if method == "DELETE":
                self.fake.tokens.discard(self._token() or "")
            return self._send(200, (self._token() or "").encode(), "text/plain")
        if method != "GET":
            return self._send(405, b"method not allowed here", "text/plain")
        if path == "/data/auth":
            return self._send(200, f"User '{self.fake.user}' is logged in".encode(),
                              "text/plain")
        if path == "/data/version":
            return self._send(404, b"not found", "text/plain")
        if path == "/xapi/siteConfig/buildInfo":
            return self._json({"version": "1.8.10", "buildNumber": "1", "commit": "0"})
        if path == "/xapi/schemas":
            return self._json(["xnat"])
        if path == "/xapi/schemas/xnat":
            return self._send(200, XNAT_XSD.encode(), "text/xml")
        if path == "/data/search/elements":  # the searchable types, for xnatpy's query fields
            return self._json(_result_set([{"ELEMENT_NAME": t, "COUNT": "0"}
                                           for t in _SEARCHABLE]))
        if path.startswith("/data/search/elements/"):
            return self._json(_result_set([{"FIELD_ID": "INSERT_DATE", "TYPE": "date"}]))
        return self._data(path, query)

    def _canonical(self, path: str) -> str:
        """``/data/experiments/E/...`` and ``/data/subjects/S/...`` (XNAT's short forms, used in
        the URIs it hands out) as the project path they stand for."""
        m = re.match(r"/data/(experiments|subjects)/([^/]+)(.*)", path)
        if m is None:
            return path
        kind, ident, rest = m.groups()
        for project, subjects in self.fake.projects.items():
            for subject in subjects:
                base = f"/data/projects/{project}/subjects/{subject.id}"
                if kind == "subjects" and ident == subject.id:
                    return base + rest
                for exp in subject.experiments:
                    if kind == "experiments" and ident == exp.id:
                        return f"{base}/experiments/{exp.id}{rest}"
        return path

    def _data(self, path: str, query: dict[str, str]) -> None:
        path = self._canonical(path)
        if path == "/data/projects":
            return self._json(_result_set([{"ID": p, "name": p, "URI": f"/data/projects/{p}"}
                                           for p in self.fake.projects]))
        m = re.fullmatch(r"/data/projects/([^/]+)(?:/subjects(?:/([^/]+)(?:/experiments"
                         r"(?:/([^/]+)(?:/scans(?:/([^/]+)(?:/resources(?:/([^/]+)(?:/files"
                         r"(?:/(.+))?)?)?)?)?)?)?)?)?)?", path)
        if m is None or m.group(1) not in self.fake.projects:
            return self._send(404, b"not found", "text/plain")
        project, subject_id, exp_id, scan_id, resource, file_name = m.groups()
        tail = path.rsplit("/", 1)[-1]
        subjects = self.fake.projects[project]
        if subject_id is None:
            if tail == "subjects":
                return self._json(_result_set([
                    {"ID": s.id, "label": s.label, "project": project,
                     "URI": f"/data/subjects/{s.id}"} for s in subjects]))
            return self._json(_item("xnat:projectData", {"ID": project, "name": project}))
        subject = next((s for s in subjects if subject_id in (s.id, s.label)), None)
        if subject is None:
            return self._send(404, b"subject not found", "text/plain")
        if exp_id is None:
            if tail == "experiments":
                return self._json(_result_set([
                    {"ID": e.id, "label": e.label, "xsiType": e.xsi_type, "project": project,
                     "URI": f"/data/experiments/{e.id}"} for e in subject.experiments]))
            fields = [{"meta": {"xsi:type": "xnat:subjectData_field", "isHistory": False},
                       "data_fields": {"name": k, "field": v, "subject_id": subject.id},
                       "children": []} for k, v in subject.fields.items()]
            children = [{"field": "fields/field", "items": fields}] if fields else []
            return self._json(_item("xnat:subjectData", {"ID": subject.id, "label": subject.label,
                                                         "project": project}, children))
        exp = next((e for e in subject.experiments if exp_id in (e.id, e.label)), None)
        if exp is None:
            return self._send(404, b"experiment not found", "text/plain")
        if scan_id is None:
            if tail == "scans":
                return self._json(_result_set([
                    {"ID": s.id, "type": s.type, "xsiType": s.xsi_type,
                     "series_description": s.type,
                     "URI": f"/data/experiments/{exp.id}/scans/{s.id}"} for s in exp.scans]))
            return self._json(_item(exp.xsi_type, {"ID": exp.id, "label": exp.label,
                                                   "project": project,
                                                   "subject_ID": subject.id}))
        scan = next((s for s in exp.scans if s.id == scan_id), None)
        if scan is None:
            return self._send(404, b"scan not found", "text/plain")
        if resource is None:
            if tail == "resources":
                size = sum(len(b) for b in scan.files.values())
                return self._json(_result_set([
                    {"xnat_abstractresource_id": scan.resource_id, "label": scan.resource,
                     "element_name": "xnat:resourceCatalog", "format": "DICOM",
                     "file_count": str(len(scan.files)), "file_size": str(size)}]))
            return self._json(_item(scan.xsi_type, {"ID": scan.id, "type": scan.type,
                                                    "series_description": scan.type,
                                                    "image_session_ID": exp.id,
                                                    "project": project}))
        if resource not in (scan.resource, scan.resource_id):
            return self._send(404, b"resource not found", "text/plain")
        base = f"/data/experiments/{exp.id}/scans/{scan.id}/resources/{scan.resource_id}/files"
        if file_name is None:
            if query.get("format") == "zip":
                return self._send(400, b"zip downloads are not served here", "text/plain")
            return self._json(_result_set([
                {"Name": n, "Size": str(len(b)), "URI": f"{base}/{n}", "collection":
                 scan.resource, "file_format": "DICOM", "cat_ID": scan.resource_id,
                 "digest": hashlib.md5(b).hexdigest()} for n, b in scan.files.items()]))
        data = scan.files.get(file_name)
        if data is None:
            return self._send(404, b"file not found", "text/plain")
        key = f"{project}/{subject.id}/{exp.id}/{scan.id}/{file_name}"
        self.fake.downloads[key] = self.fake.downloads.get(key, 0) + 1
        return self._send(200, data, "application/octet-stream")

    def _login(self, body: str) -> None:
        form = {k: v[-1] for k, v in parse_qs(body).items()}
        if (form.get("username"), form.get("password")) != (self.fake.user, self.fake.password):
            return self._send(401, b"<h3>Login attempt failed. Please try again.</h3>",
                              "text/html")
        token = uuid.uuid4().hex.upper()
        self.fake.tokens.add(token)
        self._send(200, token.encode(), "text/plain",
                   {"Set-Cookie": f"JSESSIONID={token}; Path=/; HttpOnly"})

    def _token(self) -> str | None:
        m = re.search(r"JSESSIONID=([0-9A-F]+)", self.headers.get("Cookie", ""))
        return m.group(1) if m else None

    def _authorised(self) -> bool:
        return self._token() in self.fake.tokens

    def _json(self, payload: Any) -> None:
        self._send(200, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, data: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def running_xnat() -> Iterator[tuple[str, FakeXnat]]:
    """(base URL, state) of a server on a free loopback port, stopped on exit."""
    fake = FakeXnat()
    with serve_in_thread(_Handler, fake) as url:
        yield url, fake

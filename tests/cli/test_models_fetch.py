"""`medops models fetch`: a pinned URL into the project's weights store, then offline."""

from __future__ import annotations

import hashlib
import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from medops.cli.main import app
from medops.project import Project
from tests.servers.http import serve_in_thread

runner = CliRunner()


class _Blob(BaseHTTPRequestHandler):
    fake: bytes

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.fake)))
        self.end_headers()
        self.wfile.write(self.fake)

    def log_message(self, *args: Any) -> None:
        pass


def medops(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout if "--json" in args else " ".join(result.output.split())


def test_fetch_stores_by_hash_and_says_where_to_put_a_file_offline(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    Project.init(root, name="fetch-test")
    blob = b"pretend these are weights" * 100
    sha = hashlib.sha256(blob).hexdigest()
    store = root.resolve() / ".medops" / "weights"
    with serve_in_thread(_Blob, blob) as url:
        code, out = medops("models", "fetch", f"{url}/net.pt", "--sha256", sha, "-C", str(root),
                           "--json")
    assert code == 0, out
    assert json.loads(out) == {"path": str(store / sha), "sha256": sha,
                               "source": f"{url}/net.pt"}
    assert (store / sha).read_bytes() == blob

    # the server is gone: a stored file is still found, a missing one is explained
    code, out = medops("models", "fetch", f"{url}/net.pt", "--sha256", sha, "-C", str(root))
    assert code == 0 and out == str(store / sha)
    other = "e" * 64
    code, out = medops("models", "fetch", f"{url}/other.pt", "--sha256", other, "-C", str(root))
    assert code == 8, out  # WeightsUnavailableError
    squashed = "".join(out.split())  # rich folds the long path over lines
    assert f"copyitto{store / other}" in squashed
    assert f"medopsmodelsfetch./other.pt--sha256{other}" in squashed

    # a local file, checked against the hash it is said to have
    local = tmp_path / "mine.pt"
    local.write_bytes(blob + b"!")
    code, out = medops("models", "fetch", str(local), "--sha256", sha, "-C", str(root))
    assert code == 8 and f"nottheexpected{sha}" in "".join(out.split())
    code, out = medops("models", "fetch", f"{url}/net.pt", "-C", str(root))
    assert code == 2 and "--sha256" in out  # a URL must be pinned

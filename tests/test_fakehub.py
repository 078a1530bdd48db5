"""The loopback Hub's download side, driven by the clients that read it: huggingface_hub 2.4.0
(hf_hub_download, HfFileSystem range reads) and the real llama-server `-hf` downloader."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

REPO = "tester/Tiny-GGUF"
BIG = bytes(range(256)) * 4096  # 1 MiB, an LFS object
README = b"# a regular file\n"


class Answer:
    def __init__(self, status: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code, self.headers, self.content = status, headers, content

    def json(self):
        return json.loads(self.content)


def request(method: str, url: str, *, headers: dict[str, str] | None = None, follow: bool = False) -> Answer:
    """One plain HTTP request (stdlib), following redirects only when asked."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request(method, u.path + (f"?{u.query}" if u.query else ""), headers=headers or {})
    r = conn.getresponse()
    ans = Answer(r.status, {k: v for k, v in r.getheaders()}, r.read())
    conn.close()
    if follow and ans.status_code in (301, 302, 307):
        return request(method, ans.headers["Location"], headers=headers)
    return ans


@pytest.fixture
def hub(hub):
    """The loopback Hub (conftest.hub) holding REPO: an LFS file and a README."""
    hub.put_files(REPO, {"Tiny-Q8_0.gguf": BIG, "README.md": README})
    return hub


def test_refs_and_tree_have_the_fields_llama_cpp_reads(hub):
    refs = request("GET", f"{hub.url}/api/models/{REPO}/refs").json()
    main = [b for b in refs["branches"] if b["name"] == "main"]
    assert len(main) == 1 and re.fullmatch(r"[0-9a-f]{40}", main[0]["targetCommit"])
    tree = request("GET", f"{hub.url}/api/models/{REPO}/tree/{main[0]['targetCommit']}?recursive=true").json()
    by_path = {e["path"]: e for e in tree}
    gguf = by_path["Tiny-Q8_0.gguf"]
    assert gguf["type"] == "file" and gguf["size"] == len(BIG)
    assert gguf["lfs"]["oid"] == hashlib.sha256(BIG).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{40}", by_path["README.md"]["oid"]) and "lfs" not in by_path["README.md"]


def test_resolve_redirects_lfs_files_to_the_cdn_with_linked_headers(hub):
    commit = hub.head(REPO).oid
    r = request("HEAD", f"{hub.url}/{REPO}/resolve/main/Tiny-Q8_0.gguf")
    sha = hashlib.sha256(BIG).hexdigest()
    assert r.status_code == 302 and r.headers["Location"].startswith(f"{hub.cdn_url}/_cdn/")
    assert r.headers["X-Repo-Commit"] == commit
    assert (r.headers["X-Linked-Etag"], r.headers["X-Linked-Size"]) == (f'"{sha}"', str(len(BIG)))
    cdn = request("HEAD", r.headers["Location"])
    assert cdn.status_code == 200 and cdn.headers["Content-Length"] == str(len(BIG))
    assert cdn.headers["Accept-Ranges"] == "bytes" and cdn.headers["ETag"] == f'"{sha}"'
    plain = request("GET", f"{hub.url}/{REPO}/resolve/{commit}/README.md")
    assert plain.status_code == 200 and plain.content == README


@pytest.mark.parametrize(("spec", "start", "end"), [("bytes=10-19", 10, 20), ("bytes=1048570-", 1048570, 1048576),
                                                     ("bytes=-6", 1048570, 1048576), ("bytes=5-99999999", 5, 1048576)])
def test_range_requests_answer_206_with_content_range(hub, spec, start, end):
    before = hub.bytes_sent
    r = request("GET", f"{hub.url}/{REPO}/resolve/main/Tiny-Q8_0.gguf", headers={"Range": spec}, follow=True)
    assert r.status_code == 206 and r.content == BIG[start:end]
    assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(BIG)}"
    assert hub.bytes_sent - before == end - start
    assert hub.downloads("/_cdn/")[-1].range == spec


def test_unsatisfiable_range_is_416(hub):
    r = request("GET", f"{hub.url}/{REPO}/resolve/main/Tiny-Q8_0.gguf", headers={"Range": f"bytes={len(BIG)}-"},
                follow=True)
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(BIG)}"


def test_hf_hub_download_fetches_once_into_the_standard_cache(hub, hf_env):
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(REPO, "Tiny-Q8_0.gguf", endpoint=hub.url, cache_dir=hf_env)
    commit = hub.head(REPO).oid
    assert Path(path) == hf_env / "models--tester--Tiny-GGUF" / "snapshots" / commit / "Tiny-Q8_0.gguf"
    assert Path(path).read_bytes() == BIG and hub.bytes_sent == len(BIG)
    assert (hf_env / "models--tester--Tiny-GGUF" / "blobs" / hashlib.sha256(BIG).hexdigest()).is_file()
    hf_hub_download(REPO, "Tiny-Q8_0.gguf", endpoint=hub.url, cache_dir=hf_env)
    assert hub.bytes_sent == len(BIG)  # the second call is served from the cache


def test_dropped_connection_is_retried_by_hf_hub_download(hub, hf_env):
    """The body is cut after 300,000 bytes; the client sees a short body, retries, and the file is whole.
    (huggingface_hub counts resumable bytes per 10 MB chunk, so here it starts again from 0.)"""
    from huggingface_hub import hf_hub_download

    hub.drop("/_cdn/", after=300_000)
    path = hf_hub_download(REPO, "Tiny-Q8_0.gguf", endpoint=hub.url, cache_dir=hf_env)
    assert Path(path).read_bytes() == BIG
    gets = hub.downloads("/_cdn/")
    assert [g.sent for g in gets] == [300_000, len(BIG)]
    assert hub.bytes_sent == 300_000 + len(BIG)


def test_hf_file_system_reads_exact_ranges(hub, hf_env):
    """HfFileSystem without a read-ahead cache fetches exactly the bytes asked for, one range each."""
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem(endpoint=hub.url)
    with fs.open(f"{REPO}/Tiny-Q8_0.gguf", cache_type="none") as f:
        f.seek(4096)
        assert f.read(100) == BIG[4096:4196]
        f.seek(len(BIG) - 8)
        assert f.read(8) == BIG[-8:]
    assert [g.range for g in hub.downloads("/_cdn/")] == ["bytes=4096-4195", f"bytes={len(BIG) - 8}-{len(BIG) - 1}"]
    assert hub.bytes_sent == 108


@pytest.mark.tools
def test_llama_cpp_downloader_follows_the_cdn_redirect_and_resumes_with_range(hub, hf_env, tmp_path,
                                                                              llama_server_bin):
    """The real -hf downloader: refs -> tree -> HEAD/GET resolve (302 to the CDN origin) into the standard
    cache; a body cut mid-way is resumed with `Range: bytes=N-` (206), so nothing travels twice."""
    from mtpgraft.check.server import LlamaServer
    from mtpgraft.testmodels import build_tiny_model

    model = build_tiny_model(tmp_path / "m.gguf", layout="full", head="aligned").read_bytes()
    hub.put_files("me/Resume-GGUF", {"Tiny-Q8_0.gguf": model})
    hub.drop("/_cdn/", after=1_000_000)
    env = {"MODEL_ENDPOINT": hub.url + "/", "HF_HUB_CACHE": str(hf_env), "LLAMA_CACHE": ""}
    with LlamaServer("me/Resume-GGUF:Q8_0", hf_repo="me/Resume-GGUF:Q8_0", env=env, ctx_size=512) as srv:
        local = Path(srv.props()["model_path"])
    assert local.read_bytes() == model and str(hf_env) in str(local)
    gets = hub.downloads("/_cdn/")
    assert [(g.sent, g.range) for g in gets] == [(1_000_000, None), (len(model) - 1_000_000, "bytes=1000000-")]
    assert hub.bytes_sent == len(model)

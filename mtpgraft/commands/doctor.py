"""`mtpgraft doctor`: which llama.cpp tools mtpgraft finds, where, which build, the MTP spelling."""

from __future__ import annotations

from typing import Any

import click

from ..errors import VerdictFailedError
from .common import emit_json, error_boundary
from .options import standard_options


@click.command("doctor")
@standard_options(llama_cpp=True)
@error_boundary
def doctor_cmd(llama_cpp: str | None, as_json: bool) -> None:
    """Show which llama.cpp tools mtpgraft finds, where, which build, and the MTP flag spelling."""
    from ..toolchain import cached_bin_dir
    from ..tools import TOOLS

    rows = [_tool_row(name, llama_cpp) for name in TOOLS]
    server = next((r for r in rows if r["tool"] == "llama-server" and r["found"]), None)
    spec, tls = _server_support(server["path"]) if server else (None, None)
    cache = cached_bin_dir()
    result = {"tools": rows, "mtp_spec_type": spec, "https_downloads": tls,
              "toolchain_cache": str(cache) if cache else None,
              "ok": all(r["found"] for r in rows) and spec is not None}
    if as_json:
        emit_json(result)
    else:
        _show(rows, server=server is not None, spec=spec, tls=tls, cache=cache)
    if not result["ok"]:
        missing = [r["tool"] for r in rows if not r["found"]]
        raise VerdictFailedError(f"not found: {', '.join(missing)}" if missing else
                                 "this llama-server has no MTP speculative type")


def _tool_row(name: str, llama_cpp: str | None) -> dict[str, Any]:
    """Where `name` is found, from where, and which build it is (or why it is not found)."""
    from ..errors import ToolNotFoundError
    from ..tools import locate_tool, tool_version

    try:
        loc = locate_tool(name, llama_cpp)
    except ToolNotFoundError as e:
        return {"tool": name, "found": False, "path": None, "source": None, "version": None, "error": str(e)}
    version = tool_version(str(loc.path))
    if not version:  # llama-quantize has no --version: a sibling llama-server tells the build
        sibling = loc.path.with_name("llama-server")
        version = tool_version(str(sibling)) if sibling.is_file() else ""
    return {"tool": name, "found": True, "path": str(loc.path), "source": loc.source, "version": version or None}


def _server_support(path: str) -> tuple[str | None, bool]:
    """The llama-server's MTP --spec-type spelling (None: no MTP), and whether it was built with TLS."""
    from ..hub.remote import server_has_tls
    from ..tools import probe_mtp_spec_type

    return probe_mtp_spec_type(path), server_has_tls(path)


def _show(rows: list[dict[str, Any]], *, server: bool, spec: str | None, tls: bool | None, cache: Any) -> None:
    """The text report: the tools, the found llama-server's MTP and TLS support, the toolchain cache."""
    from ..hub.remote import TLS_HINT

    for r in rows:
        if r["found"]:
            click.echo(f"{r['tool']:<17} {r['path']}  [{r['source']}]  {r['version'] or '?'}")
        else:
            click.echo(f"{r['tool']:<17} NOT FOUND")
    if server:
        click.echo(f"MTP speculative type: {spec or 'none (this llama-server has no MTP support)'}"
                   + (f"  (use --spec-type {spec})" if spec else ""))
        click.echo("llama-server -hf over https: " + ("yes (built with TLS)" if tls else
                   "no: built without TLS, it downloads from http:// endpoints only; to get https, "
                   + TLS_HINT))
    click.echo(f"toolchain cache: {cache or 'not built (run `mtpgraft toolchain`)'}")

"""`mtpgraft doctor`: which llama.cpp tools mtpgraft finds, where, which build, the MTP spelling."""

from __future__ import annotations

import click

from ..errors import VerdictFailedError
from .common import emit_json, error_boundary, json_option, llama_cpp_option


@click.command("doctor")
@llama_cpp_option
@json_option
@error_boundary
def doctor_cmd(llama_cpp: str | None, as_json: bool) -> None:
    """Show which llama.cpp tools mtpgraft finds, where, which build, and the MTP flag spelling."""
    from ..errors import ToolNotFoundError
    from ..hub.remote import TLS_HINT
    from ..toolchain import cached_bin_dir
    from ..tools import TOOLS, locate_tool, probe_mtp_spec_type, tool_version

    rows = []
    for name in TOOLS:
        try:
            loc = locate_tool(name, llama_cpp)
        except ToolNotFoundError as e:
            rows.append({"tool": name, "found": False, "path": None, "source": None, "version": None,
                         "error": str(e)})
            continue
        version = tool_version(str(loc.path))
        if not version:  # llama-quantize has no --version: a sibling llama-server tells the build
            sibling = loc.path.with_name("llama-server")
            version = tool_version(str(sibling)) if sibling.is_file() else ""
        rows.append({"tool": name, "found": True, "path": str(loc.path), "source": loc.source,
                     "version": version or None})
    spec = None
    server = next((r for r in rows if r["tool"] == "llama-server" and r["found"]), None)
    tls = None
    if server:
        from ..hub.remote import server_has_tls

        spec = probe_mtp_spec_type(server["path"])
        tls = server_has_tls(server["path"])
    cache = cached_bin_dir()
    result = {"tools": rows, "mtp_spec_type": spec, "https_downloads": tls,
              "toolchain_cache": str(cache) if cache else None,
              "ok": all(r["found"] for r in rows) and spec is not None}
    if as_json:
        emit_json(result)
    else:
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
    if not result["ok"]:
        missing = [r["tool"] for r in rows if not r["found"]]
        raise VerdictFailedError(f"not found: {', '.join(missing)}" if missing else
                                 "this llama-server has no MTP speculative type")

"""`mtpgraft doctor`: per runtime (mainline llama.cpp, ik_llama.cpp), which tools mtpgraft finds, where,
which build, how its llama-server turns MTP on, and which architectures it runs MTP for."""

from __future__ import annotations

from typing import Any

import click

from ..errors import VerdictFailedError
from ..runtimes import IK, LABELS, MAINLINE, RUNTIMES
from .common import emit_json, error_boundary
from .options import standard_options


@click.command("doctor")
@standard_options(llama_cpp=True)
@error_boundary
def doctor_cmd(llama_cpp: str | None, as_json: bool) -> None:
    """Show, for mainline llama.cpp and for ik_llama.cpp, which tools mtpgraft finds, where, which build,
    the MTP flag spelling (from the llama-server's --help) and the architectures it runs MTP for.
    --llama-cpp names mainline's tools; ik's are found by $MTPGRAFT_IK_LLAMA_CPP or its toolchain cache.
    Fails when a mainline tool is missing; ik_llama.cpp is optional."""
    reports = {rt: _runtime_report(rt, llama_cpp if rt == MAINLINE else None) for rt in RUNTIMES}
    main = reports[MAINLINE]
    tls = main.pop("https_downloads")
    reports[IK].pop("https_downloads")
    # The top-level keys are mainline's, as before there were runtimes; "runtimes" holds both.
    result = {"tools": main["tools"], "mtp_spec_type": main["mtp_spec_type"], "https_downloads": tls,
              "toolchain_cache": main["toolchain_cache"], "ok": main["ok"], "runtimes": reports}
    if as_json:
        emit_json(result)
    else:
        _show_mainline(main, tls)
        _show_ik(reports[IK])
    if not main["ok"]:
        missing = [r["tool"] for r in main["tools"] if not r["found"]]
        raise VerdictFailedError(f"not found: {', '.join(missing)}" if missing else
                                 "this llama-server has no MTP speculative type")


def _runtime_report(runtime: str, llama_cpp: str | None) -> dict[str, Any]:
    """One runtime's tools, its llama-server's MTP flag and TLS, its cache and MTP architectures."""
    from ..hub.remote import server_has_tls
    from ..pins import cached_bin_dir, pin_for
    from ..toolchain import mtp_architectures
    from ..tools import TOOLS, probe_mtp_flag, probe_mtp_spec_type

    rows = [_tool_row(name, llama_cpp, runtime) for name in TOOLS]
    server = next((r for r in rows if r["tool"] == "llama-server" and r["found"]), None)
    flag = probe_mtp_flag(server["path"]) if server else None
    cache = cached_bin_dir(runtime)
    from_cache = server is not None and cache is not None and server["path"] == str(cache / "llama-server")
    archs = mtp_architectures(runtime) if from_cache else None
    return {"runtime": runtime, "label": LABELS[runtime], "pin": pin_for(runtime).spec, "tools": rows,
            "build": server["version"] if server else None, "mtp_flag": flag,
            "mtp_spec_type": probe_mtp_spec_type(server["path"]) if server else None,
            "https_downloads": server_has_tls(server["path"]) if server else None,
            "mtp_architectures": archs,
            "mtp_architectures_from": ("the source the cached build was made from" if archs is not None else None),
            "toolchain_cache": str(cache) if cache else None,
            "ok": all(r["found"] for r in rows) and flag is not None}


def _tool_row(name: str, llama_cpp: str | None, runtime: str) -> dict[str, Any]:
    """Where `name` is found, from where, and which build it is (or why it is not found)."""
    from ..errors import ToolNotFoundError
    from ..tools import locate_tool, tool_version

    try:
        loc = locate_tool(name, llama_cpp, runtime)
    except ToolNotFoundError as e:
        return {"tool": name, "found": False, "path": None, "source": None, "version": None, "error": str(e)}
    version = tool_version(str(loc.path))
    if not version:  # llama-quantize has no --version: a sibling llama-server tells the build
        sibling = loc.path.with_name("llama-server")
        version = tool_version(str(sibling)) if sibling.is_file() else ""
    return {"tool": name, "found": True, "path": str(loc.path), "source": loc.source, "version": version or None}


def _show_tools(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if r["found"]:
            click.echo(f"{r['tool']:<17} {r['path']}  [{r['source']}]  {r['version'] or '?'}")
        else:
            click.echo(f"{r['tool']:<17} NOT FOUND")


def _archs_line(rep: dict[str, Any]) -> str:
    if rep["mtp_architectures"] is not None:
        return (f"MTP architectures: {', '.join(rep['mtp_architectures']) or 'none'}  "
                f"(read from {rep['mtp_architectures_from']}: no binary lists them)")
    return ("MTP architectures: unknown (no binary lists them; known only for a build from "
            "`mtpgraft toolchain`, read from its source)")


def _show_mainline(rep: dict[str, Any], tls: bool | None) -> None:
    """Mainline's report, as doctor printed it before ik_llama.cpp, plus its MTP architectures."""
    from ..hub.remote import TLS_HINT

    _show_tools(rep["tools"])
    spec = rep["mtp_spec_type"]
    if any(r["tool"] == "llama-server" and r["found"] for r in rep["tools"]):
        click.echo(f"MTP speculative type: {spec or 'none (this llama-server has no MTP support)'}"
                   + (f"  (use --spec-type {spec})" if spec else ""))
        click.echo("llama-server -hf over https: " + ("yes (built with TLS)" if tls else
                   "no: built without TLS, it downloads from http:// endpoints only; to get https, "
                   + TLS_HINT))
        click.echo(_archs_line(rep))
    click.echo(f"toolchain cache: {rep['toolchain_cache'] or 'not built (run `mtpgraft toolchain`)'}")


def _show_ik(rep: dict[str, Any]) -> None:
    """ik_llama.cpp's report: optional, so a missing build is one line, not a failure."""
    click.echo(f"\n{rep['label']} ({rep['pin']}):")
    if not any(r["found"] for r in rep["tools"]):
        click.echo("not found (optional: build it with `mtpgraft toolchain --runtime ik`, or point "
                   "$MTPGRAFT_IK_LLAMA_CPP at an ik_llama.cpp build)")
        return
    _show_tools(rep["tools"])
    flag = {"-mtp": "-mtp / --multi-token-prediction"}.get(rep["mtp_flag"], rep["mtp_flag"])
    click.echo(f"MTP flag: {flag or 'none (this llama-server has no MTP support)'}")
    click.echo(_archs_line(rep))
    click.echo(f"toolchain cache: {rep['toolchain_cache'] or 'not built (run `mtpgraft toolchain --runtime ik`)'}")

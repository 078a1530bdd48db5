"""`mtpgraft toolchain` (build the llama.cpp tools) and `mtpgraft doctor` (say what is found)."""

from __future__ import annotations

import click

from ..cli import STATE, cli, emit_json, error_boundary, info, json_option, llama_cpp_option


@cli.command("toolchain")
@click.option("--cmake-arg", "cmake_args", multiple=True, metavar="ARG",
              help="Extra CMake flag, repeatable (e.g. -DGGML_CUDA=ON, -DGGML_METAL=ON, -DGGML_HIP=ON).")
@click.option("-j", "--jobs", type=int, default=None, help="Parallel build jobs (default: all cores).")
@click.option("--sdist", type=click.Path(dir_okay=False), default=None,
              help="Use this local llama-cpp-python sdist instead of downloading it ($MTPGRAFT_SDIST).")
@click.option("--force", is_flag=True, help="Rebuild even if the cache holds this build.")
@click.option("--print-bin-dir", is_flag=True, help="Print only the bin directory (for scripts).")
@json_option
@error_boundary
def toolchain_cmd(cmake_args: tuple[str, ...], jobs: int | None, sdist: str | None, force: bool,
                  print_bin_dir: bool, as_json: bool) -> None:
    """Build llama-server, llama-quantize, llama-imatrix, llama-gguf-split and llama-perplexity from the llama.cpp
    source vendored in the pinned llama-cpp-python sdist (PyPI). Needs pip, cmake and a C++ compiler.
    A second run with the same flags returns at once."""
    from ..toolchain import LLAMA_CPP_COMMIT, SDIST_NAME, SDIST_VERSION, build_toolchain

    def log(line: str) -> None:
        if not STATE.quiet and not print_bin_dir and not as_json:
            click.echo(line, err=True)

    if not print_bin_dir and not as_json:
        info(f"llama.cpp {LLAMA_CPP_COMMIT} from {SDIST_NAME}=={SDIST_VERSION}")
    res = build_toolchain(cmake_args=cmake_args, jobs=jobs, force=force, sdist=sdist, log=log)
    if as_json:
        emit_json({"bin_dir": str(res.bin_dir), "built": res.built, "commit": LLAMA_CPP_COMMIT,
                   "tools": {k: str(v) for k, v in res.tools.items()}})
    elif print_bin_dir:
        click.echo(str(res.bin_dir))
    else:
        info(("built" if res.built else "already built") + f": {res.bin_dir}")
        click.echo(str(res.bin_dir))


@cli.command("doctor")
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
        raise SystemExit(1)

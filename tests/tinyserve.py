"""llama-server helpers shared by the tests that run the tiny test models (mtpgraft.testmodels)."""

from __future__ import annotations

from pathlib import Path

from mtpgraft.check.server import LlamaServer

M_DRAFT = "llamacpp:spec_decode_num_draft_tokens_total"
M_ACCEPTED = "llamacpp:spec_decode_num_accepted_tokens_total"
M_DRAFTS = "llamacpp:spec_decode_num_drafts_total"
M_POS0 = 'llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"}'


def serve(model: Path, llama_cpp_dir: Path, **kw) -> LlamaServer:
    """A LlamaServer on one thread: the tiny models need no more, and on a busy machine llama.cpp's
    spinning worker threads slow everything down by orders of magnitude."""
    kw.setdefault("startup_timeout", 60)
    return LlamaServer(model, llama_cpp=llama_cpp_dir, threads=1, **kw)


def run(server: LlamaServer, prompt: str, **kw) -> dict:
    """One completion; returns content, draft counts from timings and from the /metrics delta."""
    before = server.metrics()
    res = server.completion(prompt, **kw)
    after = server.metrics()
    t = res["timings"]
    return {"content": res["content"], "draft_n": t.get("draft_n", 0),
            "accepted": t.get("draft_n_accepted", 0),
            "m_draft": after.get(M_DRAFT, 0) - before.get(M_DRAFT, 0),
            "m_accepted": after.get(M_ACCEPTED, 0) - before.get(M_ACCEPTED, 0),
            "m_drafts": after.get(M_DRAFTS, 0) - before.get(M_DRAFTS, 0),
            "m_pos0": after.get(M_POS0, 0) - before.get(M_POS0, 0)}


def rate(r: dict) -> float:
    """Acceptance of one run() result, from /metrics (asserted equal to the response's timings)."""
    assert r["draft_n"] > 0, r
    assert (r["m_draft"], r["m_accepted"]) == (r["draft_n"], r["accepted"]), r
    return r["m_accepted"] / r["m_draft"]

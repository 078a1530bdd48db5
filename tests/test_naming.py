"""mtpgraft.naming: shard names, stems, quant tags, sidecar names, and llama.cpp's `-hf` selection
rules re-stated from common/download.cpp (the tools tests compare them with the real server)."""

from __future__ import annotations

import pytest

from mtpgraft import naming


def test_shard_names_round_trip():
    names = naming.shard_names("Model-Q8_0", 3)
    assert names == ["Model-Q8_0-00001-of-00003.gguf", "Model-Q8_0-00002-of-00003.gguf",
                     "Model-Q8_0-00003-of-00003.gguf"]
    assert naming.parse_shard(names[1]) == naming.Shard("Model-Q8_0", 2, 3)
    assert naming.parse_shard("Model-Q8_0.gguf") is None


@pytest.mark.parametrize(("name", "stripped", "stem"), [
    ("Qwen3.6-27B-F16.gguf", "Qwen3.6-27B-F16", "Qwen3.6-27B"),
    ("Qwen3.6-27B-bf16-00001-of-00002.gguf", "Qwen3.6-27B-bf16", "Qwen3.6-27B"),
    ("model.GGUF", "model", "model"),
    ("F16.gguf", "F16", "F16"),  # nothing would be left: keep it
])
def test_strip_and_stem(name, stripped, stem):
    assert naming.strip_gguf(name) == stripped
    assert naming.model_stem(name) == stem


@pytest.mark.parametrize(("path", "stem"), [
    ("Q8_0/Name-Q8_0-00001-of-00002.gguf", "Name"), ("sub/mtp-Name-Q8_0.gguf", "Name"),
    ("mtp-Name.gguf", "Name"), ("Name-IQ2_XXS.gguf", "Name"), ("Qwen3.6-27B-F16.gguf", "Qwen3.6-27B"),
    ("Name.gguf", "Name"), ("mtp-Qwen3.6-27B-q8_0.gguf", "Qwen3.6-27B"),
])
def test_untagged_stem_is_what_a_quant_and_its_sidecar_share(path, stem):
    assert naming.untagged_stem(path) == stem


@pytest.mark.parametrize(("name", "tag"), [
    ("Model-Q4_K_M.gguf", "Q4_K_M"), ("model-iq2_xxs-00001-of-00003.gguf", "IQ2_XXS"),
    ("Model.BF16.gguf", "BF16"), ("Model-Q8_0.gguf", "Q8_0"), ("Model.gguf", None),
])
def test_quant_tag(name, tag):
    assert naming.quant_tag(name) == tag


def test_sidecar_name_is_what_hf_takes_as_mtp_only():
    name = naming.sidecar_name("Qwen3.6-27B", "q8_0")
    assert name == "mtp-Qwen3.6-27B-Q8_0.gguf"
    assert not naming.is_hf_model_file(name)
    assert naming.quant_bits(name) == 8


@pytest.mark.parametrize(("path", "bits"), [
    ("Model-Q4_0.gguf", 4), ("Model-F16.gguf", 16), ("x/Model-NVFP4.gguf", 4), ("Model-Q8_K_M.gguf", 8),
    ("Model-IQ2_XXS-00002-of-00003.gguf", 2), ("Model.gguf", 0), ("Model-MTP.gguf", 0), ("README.md", 0),
])
def test_quant_bits_as_llama_cpp_counts_them(path, bits):
    assert naming.quant_bits(path) == bits


def test_find_model_takes_the_first_matching_model_file_in_tree_order():
    paths = ["README.md", "mtp-Model-Q4_K_M.gguf", "Model-imatrix-Q4_K_M.gguf", "Model-Q4_K_M.gguf",
             "Q8_0/Model-Q8_0-00002-of-00002.gguf", "Q8_0/Model-Q8_0-00001-of-00002.gguf"]
    assert naming.hf_find_model(paths, "q4_k_m") == "Model-Q4_K_M.gguf"  # case-insensitive
    assert naming.hf_find_model(paths, "Q8_0") == "Q8_0/Model-Q8_0-00001-of-00002.gguf"  # first shard only
    assert naming.hf_find_model(paths, "Q6_K") is None  # a tag that matches nothing: no fallback
    assert naming.hf_find_model(paths) == "Model-Q4_K_M.gguf"  # default Q4_K_M
    assert naming.hf_find_model(["a-Q5_K_S.gguf", "b-Q8_0.gguf"]) == "b-Q8_0.gguf"  # then Q8_0
    assert naming.hf_find_model(["a-Q5_K_S.gguf", "b-Q6_K.gguf"]) == "a-Q5_K_S.gguf"  # then the first


def test_split_files_are_the_whole_set():
    paths = ["Q8_0/M-Q8_0-00001-of-00002.gguf", "Q8_0/M-Q8_0-00002-of-00002.gguf", "M-Q8_0-00001-of-00003.gguf"]
    assert naming.hf_split_files(paths, paths[0]) == paths[:2]


def test_sidecar_must_be_in_the_models_folder_or_a_parent():
    paths = ["Q4_K_M/M-Q4_K_M.gguf", "MTP/mtp-M-Q8_0.gguf", "mtp-M-F16.gguf", "Q4_K_M/mtp-M-Q6_K.gguf"]
    choice = naming.hf_find_sibling(paths, "Q4_K_M/M-Q4_K_M.gguf", tag="Q4_K_M")
    assert choice.path == "Q4_K_M/mtp-M-Q6_K.gguf"  # the deeper shared folder wins over the root
    assert choice.ignored == ("MTP/mtp-M-Q8_0.gguf",)  # a sibling folder is never seen
    root = naming.hf_find_sibling(["M-Q4_K_M.gguf", "MTP/mtp-M-Q8_0.gguf"], "M-Q4_K_M.gguf", tag="Q4_K_M")
    assert root.path is None and root.ignored == ("MTP/mtp-M-Q8_0.gguf",)


def test_sidecar_exact_tag_then_closest_bits():
    paths = ["M-Q4_K_M.gguf", "mtp-M-Q8_0.gguf", "mtp-M-Q4_K_M.gguf", "mtp-M-F16.gguf"]
    assert naming.hf_find_sibling(paths, "M-Q4_K_M.gguf", tag="Q4_K_M").path == "mtp-M-Q4_K_M.gguf"
    assert naming.hf_find_sibling(paths, "M-Q5_K_M.gguf", tag="Q5_K_M").path == "mtp-M-Q4_K_M.gguf"  # |4-5| < |8-5|
    assert naming.hf_find_sibling(paths, "M-Q6_K.gguf", tag="Q6_K").path == "mtp-M-Q8_0.gguf"  # a tie: tree order
    assert naming.hf_find_sibling(paths, "M-Q8_0.gguf", tag="Q8_0").path == "mtp-M-Q8_0.gguf"
    assert naming.hf_find_sibling(paths, "M-BF16.gguf", tag="BF16").path == "mtp-M-F16.gguf"
    # no tag: the model file's own bits
    assert naming.hf_find_sibling(paths, "M-Q8_0.gguf").path == "mtp-M-Q8_0.gguf"


def test_ties_are_reported():
    paths = ["M-Q4_K_M.gguf", "mtp-A-Q8_0.gguf", "mtp-B-Q8_0.gguf"]
    choice = naming.hf_find_sibling(paths, "M-Q4_K_M.gguf", tag="Q4_K_M")
    assert choice.path == "mtp-A-Q8_0.gguf" and naming.tied(choice) == ["mtp-B-Q8_0.gguf"]


def test_resolve_a_repo():
    paths = [".gitattributes", "README.md", "Model-Q4_K_M.gguf", "Q8_0/Model-Q8_0-00001-of-00002.gguf",
             "Q8_0/Model-Q8_0-00002-of-00002.gguf", "mtp-Model-Q8_0.gguf"]
    r = naming.hf_resolve(paths, "Q8_0")
    assert r.model == "Q8_0/Model-Q8_0-00001-of-00002.gguf" and len(r.model_files) == 2
    assert r.mtp == "mtp-Model-Q8_0.gguf"
    assert naming.hf_resolve(paths, "Q8_0", mtp=False).mtp is None
    # a sidecar resolves on its own when no model matches the tag (llama.cpp allows that with --mtp)
    alone = naming.hf_resolve(paths, "Q5_K_S")
    assert alone.model is None and alone.mtp == "mtp-Model-Q8_0.gguf"


def test_repo_id_regex():
    assert naming.REPO_ID_RE.match("Qwen/Qwen3.6-27B")
    for bad in ("Qwen", "a/b/c", "/x", "a/.b"):
        assert not naming.REPO_ID_RE.match(bad)

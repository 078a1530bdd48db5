"""The keys a graft changes: block counts, per-layer arrays cut and extended, and mtpgraft's provenance, each change recorded."""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..arch import ArchRule, same_kind_layers
from ..errors import GraftError
from ..gguf_io import KV, GGUFModel, GGUFValueType, encode_kv
from ..inspection import LAYER_ARRAY_ITEMS
from .types import KeyChange

PROV = "mtpgraft."

# A tensors-only source made by mtpgraft.sources (a Hub donor's MTP block, a converted safetensors
# head) says what it was made from and which donor tensor the MTP block followed.
CACHE_ORIGIN, CACHE_AFTER = "mtpgraft.cache.origin", "mtpgraft.cache.after"


def short(v: Any) -> Any:
    """A value as a plan shows it: a long array cut to its ends and its length."""
    if isinstance(v, list) and len(v) > 12:
        return v[:4] + ["..."] + v[-4:] + [f"({len(v)} entries)"]
    return v


def _kv_like(old: KV, value: Any) -> KV:
    """Re-encode `value` with the same key and types as `old`."""
    return encode_kv(old.key, old.vtype, value, old.item_type)


def set_kv(kvs: list[KV], key: str, vtype: GGUFValueType, value: Any, changes: list[KeyChange],
           *, after: str | None = None, item_type: GGUFValueType | None = None) -> None:
    """Set `key` in the key list being planned (in place, or inserted after `after`, else last)."""
    for i, kv in enumerate(kvs):
        if kv.key == key:
            new = encode_kv(key, kv.vtype if kv.vtype != GGUFValueType.ARRAY else vtype, value,
                            kv.item_type if kv.vtype == GGUFValueType.ARRAY else item_type)
            if kv.raw != new.raw:
                changes.append(KeyChange(key, short(kv.value), short(value)))
            kvs[i] = new
            return
    new = encode_kv(key, vtype, value, item_type)
    pos = len(kvs)
    if after is not None:
        for i, kv in enumerate(kvs):
            if kv.key == after:
                pos = i + 1
                break
    kvs.insert(pos, new)
    changes.append(KeyChange(key, None, short(value)))


def del_kv(kvs: list[KV], key: str, changes: list[KeyChange]) -> None:
    for i, kv in enumerate(kvs):
        if kv.key == key:
            changes.append(KeyChange(key, short(kv.value), None))
            del kvs[i]
            return


def extend_layer_arrays(kvs: list[KV], rule: ArchRule, arch: str, trunk: int, n_mtp: int,
                        src: GGUFModel | None, src_layers: list[int], changes: list[KeyChange],
                        warnings: list[str]) -> None:
    """Per-layer arrays cut to the trunk, then given the MTP block's entries (from the source's
    array, its scalar, the architecture's default, or the last trunk layer's value)."""
    for suffix in rule.layer_arrays:
        key = f"{arch}.{suffix}"
        idx = next((i for i, kv in enumerate(kvs) if kv.key == key), None)
        if idx is None or not kvs[idx].is_array:
            continue
        old = kvs[idx]
        if old.count < trunk:
            raise GraftError(f"key {key} has {old.count} entries but the trunk has {trunk} layers; "
                             "the file is broken beyond what a graft repairs")
        if suffix in rule.config_arrays and old.count >= trunk + n_mtp:
            continue  # the HF config's array: long enough for the trunk and the heads, kept whole
        base_vals = list(old.value)[:trunk]
        mtp_vals = _mtp_array_values(key, suffix, rule, base_vals, n_mtp, src, src_layers, warnings)
        if mtp_vals is None:  # the family's per-index rule: each head's entry from its own index
            mtp_vals = _per_index_values(kvs, rule, arch, suffix, trunk, n_mtp)
        new_vals = base_vals + mtp_vals
        if new_vals != list(old.value):
            kvs[idx] = _kv_like(old, new_vals)
            changes.append(KeyChange(key, short(list(old.value)), short(new_vals)))


def _per_index_values(kvs: list[KV], rule: ArchRule, arch: str, suffix: str, trunk: int, n_mtp: int) -> list[Any]:
    """Head k's entry (layer trunk+k) by the family's pattern: a kind array's entry is the pattern's,
    another array's is the one of the last trunk layer of the head's kind."""
    vals = {kv.key: list(kv.value)[:trunk] if kv.is_array else kv.value for kv in kvs}
    out = []
    for il in range(trunk, trunk + n_mtp):
        kind = rule.kind_of(il)  # type: ignore[misc]
        if suffix in rule.kind_arrays:
            out.append(kind[rule.kind_arrays.index(suffix)])
            continue
        twins = same_kind_layers(rule, arch, vals.get, trunk, kind)
        if not twins:
            raise GraftError(f"key {arch}.{suffix}: no trunk layer is of the kind of MTP layer {il}")
        out.append(vals[f"{arch}.{suffix}"][twins[0]])
    return out


def _mtp_array_values(key: str, suffix: str, rule: ArchRule, base_vals: list[Any], n_mtp: int,
                      src: GGUFModel | None, src_layers: list[int], warnings: list[str]) -> list[Any] | None:
    if not n_mtp:
        return []
    skv = src.kv.get(key) if src is not None else None
    if skv is not None and skv.is_array and skv.item_type in LAYER_ARRAY_ITEMS and all(i < skv.count for i in src_layers):
        sv = skv.value
        return [sv[i] for i in src_layers]
    if skv is not None and not skv.is_array:
        return [skv.value] * n_mtp
    if suffix in rule.mtp_array_defaults:
        return [rule.mtp_array_defaults[suffix]] * n_mtp
    if rule.kind_of is not None:
        return None
    if not base_vals:
        raise GraftError(f"key {key} is empty and the source gives no value for the MTP block")
    warnings.append(f"{key}: the source gives no value for the MTP block; repeating the "
                    f"last trunk layer's {base_vals[-1]!r}")
    return [base_vals[-1]] * n_mtp


def provenance(kvs: list[KV], changes: list[KeyChange], values: dict[str, str]) -> None:
    """mtpgraft's own keys, always strings: an old one of another type is replaced, not re-encoded."""
    for kv in [kv for kv in kvs if kv.key.startswith(PROV)]:
        if kv.key not in values or kv.vtype != GGUFValueType.STRING:
            del_kv(kvs, kv.key, changes)
    for k, v in values.items():
        set_kv(kvs, k, GGUFValueType.STRING, v, changes)


def graft_provenance(source: str, type_policy: str) -> dict[str, str]:
    """The provenance every graft carrying an MTP block writes; the writer fills in the sha256 of the
    bytes it copies."""
    return {f"{PROV}version": __version__, f"{PROV}mtp.source": source, f"{PROV}mtp.source_sha256": "",
            f"{PROV}mtp.type_policy": type_policy}


def source_label(src: GGUFModel) -> str:
    """What provenance records as the MTP source: the original reference, else the file name."""
    origin = src.get(CACHE_ORIGIN)
    return origin if isinstance(origin, str) and origin else src.path.name


def source_order(src: GGUFModel) -> list[str]:
    """The source's tensor names in order, led by the donor tensor its MTP block followed."""
    after = src.get(CACHE_AFTER)
    return ([after] if isinstance(after, str) and after else []) + [r.name for r in src.refs]

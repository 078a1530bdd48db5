"""The check plan: which models, which llama-server configurations, which prompts.

`plan_check` validates the user's choices and returns a frozen CheckPlan (models x server
configurations x prompts). It is pure: llama-server is found and probed once, by
`server.resolve_server`, and the result (a ServerTool) is passed in.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Setting, UsageError
from ..gguf_io import GGUFModel
from ..inspection import file_type_name
from .prompts import Prompt, builtin_prompts, load_prompts, select_prompts
from .servertool import ServerTool

# The presets. The default sits between quick and thorough: 4 servers x 20 requests x 128 tokens
# (dense models: p-min 0 and 0.75 double the MTP servers), a few minutes for a 27B model on one GPU
# (~40 tok/s without MTP); thorough is what people publish. `dense_p_min`: the p-min values a dense
# model (no experts) is swept over unless p-min is given (dense models were reported to need 0.75 where
# MoE models prefer 0; an MoE model keeps llama-server's default).
DENSE_P_MIN = (0.0, 0.75)
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"n_max": (3,), "reps": 1, "per_category": 1, "n_predict": 64, "dense_p_min": DENSE_P_MIN},
    "default": {"n_max": (1, 2, 3), "reps": 2, "per_category": 2, "n_predict": 128,
                "dense_p_min": DENSE_P_MIN},
    "thorough": {"n_max": (1, 2, 3, 4), "reps": 3, "per_category": None, "n_predict": 256,
                 "dense_p_min": DENSE_P_MIN, "context_depth": (0, 4096)},
}
DEFAULT_N_MAX = PRESETS["default"]["n_max"]
DEFAULT_TEMPERATURES = (0.0,)
DEFAULT_MIN_ACCEPTANCE = 0.3
MODES = ("auto", "chat", "raw")
REASONING = {"on": True, "off": False}  # --reasoning value -> chat_template_kwargs.enable_thinking
WARMUP_RULE = ("one warm-up request (4 tokens, the first prompt) on every server before measuring, "
               "not counted; every measured request pays its full prefill (prompt cache off)")
_TEMPLATE_SLACK = 256  # tokens a chat template adds around a message (role markers, think block)
# Bounds checked before any server starts (llama-server allocates the KV cache for the whole context
# up front: a context of 1e9 tokens dies of bad_alloc). A context beyond both the model's trained
# context_length and CTX_ANY_MODEL is refused; nothing beyond MAX_CTX is ever asked for.
MAX_CTX = 1 << 22
CTX_ANY_MODEL = 1 << 15
MAX_N_PREDICT = 1 << 15  # tokens per request: acceptance is measured well within a few hundred
MAX_REPS = 1000


@dataclass(frozen=True)
class ModelSpec:
    """A model to check. `path` is what llama-server gets (a split set's first shard)."""

    path: Path
    files: tuple[Path, ...]
    arch: str = ""
    nextn_predict_layers: int = 0
    context_length: int = 0  # the model's trained context ({arch}.context_length; 0: not stated)
    chat_template: bool = False  # the GGUF carries tokenizer.chat_template
    file_type: str | None = None  # general.file_type by name (Q4_K_M, F16, ...)
    expert_count: int = 0  # {arch}.expert_count: > 0 is an MoE model
    block_count: int = 0  # {arch}.block_count: trunk and heads (the heads are the last blocks)

    @property
    def dense(self) -> bool:
        return self.expert_count <= 0

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def quant(self) -> str:
        """The row label of the quant x category matrix."""
        return self.file_type or self.path.name


@dataclass(frozen=True)
class ServerConfig:
    """One llama-server configuration: the baseline (n_max None) or MTP with draft depth n_max, when
    given --spec-draft-p-min p_min, and `spec_types`: the whole --spec-type list when it is more than
    the MTP type alone (e.g. "draft-mtp,ngram-mod"; None: the MTP type alone)."""

    n_max: int | None = None
    p_min: float | None = None
    spec_types: str | None = None

    @property
    def mtp(self) -> bool:
        return self.n_max is not None

    @property
    def others(self) -> tuple[str, ...]:
        """The types of the list beside MTP ('' where MTP runs alone)."""
        return tuple(t for t in (self.spec_types or "").split(",") if t and t not in MTP_TYPES)

    @property
    def label(self) -> str:
        if not self.mtp:
            return "baseline"
        return ("MTP" + "".join(f"+{t}" for t in self.others) + f" n={self.n_max}"
                + (f" p-min={self.p_min:g}" if self.p_min is not None else ""))

    @property
    def tag(self) -> str:
        """File-name form of the label (server logs)."""
        if not self.mtp:
            return "baseline"
        return ("mtp" + "".join(f"-{t}" for t in self.others) + f"-n{self.n_max}"
                + (f"-p{self.p_min:g}" if self.p_min is not None else ""))


MTP_TYPES = ("draft-mtp", "mtp")  # the MTP spellings (mainline, ik_llama.cpp / older builds)


@dataclass(frozen=True)
class Condition:
    """What changes per request on one server: temperature, thinking switch, context depth."""

    temperature: float = 0.0
    reasoning: str | None = None  # "on" / "off" (chat only); None: nothing sent
    depth: int = 0  # tokens of built-in context before the prompt

    @property
    def label(self) -> str:
        parts = [f"T={self.temperature:g}"]
        if self.reasoning is not None:
            parts.append(f"thinking {self.reasoning}")
        if self.depth:
            parts.append(f"depth {self.depth}")
        return " ".join(parts)


class Keyed:
    """The server config and request condition of a record that carries their fields."""

    n_max: int | None
    p_min: float | None
    temperature: float
    reasoning: str | None
    depth: int
    spec_types: str | None

    @property
    def config(self) -> ServerConfig:
        return ServerConfig(self.n_max, self.p_min, self.spec_types)

    @property
    def condition(self) -> Condition:
        return Condition(self.temperature, self.reasoning, self.depth)


@dataclass(frozen=True)
class CheckPlan:
    models: tuple[ModelSpec, ...]
    prompts: tuple[Prompt, ...]
    server: ServerTool  # llama-server, resolved once (server.resolve_server)
    draft: Path | None = None
    n_max: tuple[int, ...] = DEFAULT_N_MAX
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    reps: int = 3
    seed: int = 0
    n_predict: int = 128
    ctx_size: int = 4096
    server_args: tuple[str, ...] = ()
    min_acceptance: float = DEFAULT_MIN_ACCEPTANCE
    min_speedup: float | None = None
    prompt_source: str = "built-in"
    warmup: bool = True
    mode: str = "auto"
    reasoning: tuple[str, ...] = ()  # empty: the template's default, nothing sent
    context_depth: tuple[int, ...] = (0,)
    p_min: tuple[float | None, ...] = (None,)  # None: llama-server's default
    dense_p_min: tuple[float, ...] = ()  # a dense model's p-min values (instead of p_min), when given
    spec_lists: tuple[str | None, ...] = (None,)  # --spec-type lists; None: the MTP type alone
    draft_model: ModelSpec | None = None  # the header of `draft`: the model the heads are in

    @property
    def spec_type(self) -> str:
        return self.server.spec_type

    def spec_type_of(self, cfg: ServerConfig) -> str:
        """The exact --spec-type value a configuration runs with."""
        return cfg.spec_types or self.spec_type

    def p_min_for(self, spec: ModelSpec) -> tuple[float | None, ...]:
        return self.dense_p_min if self.dense_p_min and spec.dense else self.p_min

    def configs_for(self, spec: ModelSpec) -> tuple[ServerConfig, ...]:
        """The baseline, then every --spec-type list x n x p-min this model runs."""
        return (ServerConfig(None),) + tuple(ServerConfig(n, p, t) for t in self.spec_lists
                                             for n in self.n_max for p in self.p_min_for(spec))

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.category for p in self.prompts))

    @property
    def configs(self) -> tuple[ServerConfig, ...]:
        """Every configuration some model runs (each model's own: configs_for)."""
        return tuple(dict.fromkeys(c for m in self.models for c in self.configs_for(m))) \
            or (ServerConfig(None),)

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return tuple(Condition(t, r, d) for t in self.temperatures
                     for r in (self.reasoning or (None,)) for d in self.context_depth)

    def mode_for(self, spec: ModelSpec) -> str:
        """chat when asked, or (auto) when the model has a chat template; raw otherwise."""
        return "chat" if self.mode == "chat" or (self.mode == "auto" and spec.chat_template) \
            else "raw"

    @property
    def server_ctx(self) -> int:
        """--ctx, raised to fit the deepest context, the longest prompt and n_predict."""
        longest = max(len(p.text.encode()) for p in self.prompts)  # bytes >= tokens (byte BPE)
        need = max(self.context_depth) + longest + _TEMPLATE_SLACK + self.n_predict
        return max(self.ctx_size, -(-need // 256) * 256)

    @property
    def n_servers(self) -> int:
        return sum(len(self.configs_for(m)) for m in self.models)

    @property
    def n_requests(self) -> int:
        """Measured requests (warm-up requests not counted)."""
        return self.n_servers * len(self.conditions) * self.reps * len(self.prompts)

    def cost(self) -> dict[str, int]:
        """The plan's size: servers, measured requests, tokens to generate, tokens to prefill (an
        upper bound: prompt bytes plus context depth)."""
        per_server = sum(c.depth + len(p.text.encode()) for c in self.conditions
                         for p in self.prompts) * self.reps
        return {"servers": self.n_servers, "requests": self.n_requests,
                "generate_tokens": self.n_requests * self.n_predict,
                "prefill_tokens": per_server * self.n_servers}

    def estimate_s(self, start_s: float, prefill_tps: float, decode_tps: float) -> float:
        """Seconds the whole plan takes at the speeds one server measured."""
        c = self.cost()
        return (c["servers"] * start_s + c["prefill_tokens"] / max(prefill_tps, 1e-9)
                + c["generate_tokens"] / max(decode_tps, 1e-9))

    def seeds(self) -> tuple[int, ...]:
        return tuple(self.seed + r for r in range(self.reps))

    def settings_dict(self) -> dict[str, Any]:
        return {
            "n_max": list(self.n_max), "temperature": list(self.temperatures), "reps": self.reps,
            "n_predict": self.n_predict, "seed": self.seed, "seeds": list(self.seeds()),
            "ctx_size": self.server_ctx, "categories": list(self.categories),
            "prompts": self.prompt_source, "n_prompts": len(self.prompts),
            "draft": str(self.draft) if self.draft else None, "spec_type": self.spec_type,
            "server_args": list(self.server_args), "llama_server": str(self.server.path),
            "mode": self.mode, "modes": {m.name: self.mode_for(m) for m in self.models},
            "reasoning": list(self.reasoning),
            "reasoning_kwargs": {r: {"enable_thinking": REASONING[r]} for r in self.reasoning},
            "context_depth": list(self.context_depth), "p_min": list(self.p_min),
            "dense_p_min": list(self.dense_p_min),
            "spec_types": [self.spec_type_of(ServerConfig(1, None, t)) for t in self.spec_lists],
            "warmup": WARMUP_RULE if self.warmup else "none",
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [{"path": str(m.path), "files": [str(f) for f in m.files], "arch": m.arch,
                        "nextn_predict_layers": m.nextn_predict_layers, "quant": m.quant,
                        "mode": self.mode_for(m), "dense": m.dense} for m in self.models],
            "servers": [f"{m.name}: {c.label}" for m in self.models for c in self.configs_for(m)],
            "n_requests": self.n_requests,
            "cost": self.cost(),
            "settings": self.settings_dict(),
            "thresholds": {"min_acceptance": self.min_acceptance, "min_speedup": self.min_speedup},
        }


def resolve_model(path: str | os.PathLike[str]) -> ModelSpec:
    """Read a model's header; a split set is given by its first shard and lists every shard."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"model file not found: {p}")
    model = GGUFModel(p)
    arch = str(model.get("general.architecture", ""))
    nextn = model.get(f"{arch}.nextn_predict_layers", 0) if arch else 0
    ctx_train = model.get(f"{arch}.context_length", 0) if arch else 0
    experts = model.get(f"{arch}.expert_count", 0) if arch else 0
    blocks = model.get(f"{arch}.block_count", 0) if arch else 0
    return ModelSpec(path=model.path, files=tuple(model.paths), arch=arch,
                     nextn_predict_layers=int(nextn or 0),
                     block_count=blocks if isinstance(blocks, int) and blocks > 0 else 0,
                     expert_count=experts if isinstance(experts, int) and experts > 0 else 0,
                     context_length=ctx_train if isinstance(ctx_train, int) and ctx_train > 0 else 0,
                     chat_template=bool(model.get("tokenizer.chat_template")),
                     file_type=file_type_name(model.get("general.file_type")))


def _unique(values: Sequence[Any], kind: type) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(kind(v) for v in values))


def settings_problem(*, n_max: Sequence[int], temperatures: Sequence[float], reps: int,
                     per_category: int | None, n_predict: int, ctx_size: int, min_acceptance: float,
                     min_speedup: float | None, context_depth: Sequence[int] = (0,),
                     p_min: Sequence[float | None] = (None,), mode: str = "auto",
                     reasoning: Sequence[str] = (), dense_p_min: Sequence[float] = (),
                     spec_types: Sequence[str] = ()) -> tuple[str, str] | None:
    """(setting, what is wrong) for the first bad check setting, or None (recipes validate with it too)."""
    if not n_max or any(int(n) < 1 for n in n_max):
        return "n_max", f"values must be >= 1, got {list(n_max)}"
    if not temperatures or any(t < 0 or not math.isfinite(t) for t in temperatures):
        return "temperatures", f"values must be >= 0, got {list(temperatures)}"
    for setting, value, low in (("reps", reps, 1), ("per_category", per_category, 1),
                                ("n_predict", n_predict, 8), ("ctx_size", ctx_size, 256)):
        if value is not None and value < low:
            return setting, f"must be >= {low}, got {value}"
    for setting, value, high in (("reps", reps, MAX_REPS), ("n_predict", n_predict, MAX_N_PREDICT),
                                 ("ctx_size", ctx_size, MAX_CTX)):
        if value is not None and value > high:
            return setting, f"must be <= {high:,}, got {value:,} (mtpgraft's bound, checked before a server starts)"
    if not 0 <= min_acceptance <= 1:
        return "min_acceptance", f"must be between 0 and 1, got {min_acceptance}"
    if min_speedup is not None and min_speedup <= 0:
        return "min_speedup", f"must be > 0, got {min_speedup}"
    if not context_depth or any(int(d) < 0 for d in context_depth):
        return "context_depth", f"values must be >= 0, got {list(context_depth)}"
    if any(int(d) > MAX_CTX for d in context_depth):
        return "context_depth", f"values must be <= {MAX_CTX:,}, got {list(context_depth)}"
    if not p_min or any(p is not None and not 0 <= p <= 1 for p in p_min):
        return "p_min", f"values must be between 0 and 1, got {list(p_min)}"
    if any(not 0 <= p <= 1 for p in dense_p_min):
        return "dense_p_min", f"values must be between 0 and 1, got {list(dense_p_min)}"
    bad = next((t for t in spec_types if not set(split_types(t)) & set(MTP_TYPES)), None)
    if bad is not None:
        return "spec_types", (f"each list must include MTP ({MTP_TYPES[0]}), got {bad!r}: the "
                              "check compares MTP alone and MTP with other drafters against no MTP")
    if mode not in MODES:
        return "mode", f"must be one of {', '.join(MODES)}, got {mode!r}"
    unknown = [r for r in reasoning if r not in REASONING]
    if unknown:
        return "reasoning", f"takes on and off, got {', '.join(unknown)}"
    return None


def split_types(value: str) -> tuple[str, ...]:
    """A --spec-type list ("draft-mtp,ngram-mod") as its types, blanks and repeats dropped."""
    return tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))


def _spec_lists(server: ServerTool, lists: Sequence[str]) -> tuple[str | None, ...]:
    """The --spec-type lists to sweep, each checked against the types this llama-server's --help
    offers; None stands for the MTP type alone."""
    out: list[str | None] = []
    for value in lists or (server.spec_type,):
        types = split_types(value)
        unknown = [t for t in types if t not in server.spec_types and t != server.spec_type]
        if unknown:
            offered = ", ".join(server.spec_types) or "no list in its --help"
            raise UsageError(f"{server.path} does not offer --spec-type {', '.join(unknown)} "
                             f"(it offers: {offered})")
        if server.spec_type not in types:
            raise UsageError(f"{server.path} spells MTP {server.spec_type!r}; the list {value!r} "
                             "does not include it")
        out.append(None if types == (server.spec_type,) else ",".join(types))
    return tuple(dict.fromkeys(out))


def validate_settings(**settings: Any) -> None:
    """UsageError for the first bad setting (the CLI calls this before it looks up any tool)."""
    bad = settings_problem(**settings)
    if bad is not None:
        raise UsageError(Setting(bad[0]), f" {bad[1]}")


def _choose_prompts(prompts: str | os.PathLike[str] | Sequence[Prompt] | None,
                    categories: Sequence[str] | None, per_category: int | None) -> tuple[list[Prompt], str]:
    if prompts is None:
        pool, source = builtin_prompts(), "built-in"
    elif isinstance(prompts, (str, os.PathLike)):
        pool, source = load_prompts(prompts), str(prompts)
    else:
        pool, source = list(prompts), "given"
    return select_prompts(pool, categories, per_category), source


def plan_check(models: Sequence[str | os.PathLike[str]], *, server: ServerTool,
               draft: str | os.PathLike[str] | None = None, n_max: Sequence[int] = DEFAULT_N_MAX,
               temperatures: Sequence[float] = DEFAULT_TEMPERATURES, reps: int = 3, seed: int = 0,
               prompts: str | os.PathLike[str] | Sequence[Prompt] | None = None,
               categories: Sequence[str] | None = None, per_category: int | None = None,
               n_predict: int = 128, ctx_size: int = 4096, server_args: Sequence[str] = (),
               min_acceptance: float = DEFAULT_MIN_ACCEPTANCE, min_speedup: float | None = None,
               warmup: bool = True, mode: str = "auto", reasoning: Sequence[str] = (),
               context_depth: Sequence[int] = (0,),
               p_min: Sequence[float | None] = (None,), dense_p_min: Sequence[float] = (),
               spec_types: Sequence[str] = ()) -> CheckPlan:
    """Validate the inputs and return the plan (pure: `server` is llama-server as resolve_server
    found it; nothing is started or probed here)."""
    if not models:
        raise UsageError("give at least one model")
    validate_settings(n_max=n_max, temperatures=temperatures, reps=reps, per_category=per_category,
                      n_predict=n_predict, ctx_size=ctx_size, min_acceptance=min_acceptance,
                      min_speedup=min_speedup, context_depth=context_depth, p_min=p_min, mode=mode,
                      reasoning=reasoning, dense_p_min=dense_p_min, spec_types=spec_types)
    n_max_t, temps, depths = _unique(n_max, int), _unique(temperatures, float), _unique(context_depth, int)
    p_min_t = tuple(dict.fromkeys(None if p is None else float(p) for p in p_min))
    reasoning_t = tuple(dict.fromkeys(reasoning))
    dense_t = tuple(dict.fromkeys(float(p) for p in dense_p_min))
    if dense_t and not server.has("--spec-draft-p-min"):
        dense_t = ()  # a preset's sweep, dropped where this llama-server has no p-min option
    lists = _spec_lists(server, spec_types)
    if any(p is not None for p in p_min_t) and not server.has("--spec-draft-p-min"):
        raise UsageError(f"{server.path} has no --spec-draft-p-min option")
    specs = tuple(resolve_model(m) for m in models)
    draft_path = None
    if draft is not None:
        draft_path = Path(draft)
        if not draft_path.is_file():
            raise UsageError(f"draft file not found: {draft_path}")
    chosen, source = _choose_prompts(prompts, categories, per_category)
    plan = CheckPlan(models=specs, prompts=tuple(chosen), server=server, draft=draft_path,
                     draft_model=resolve_model(draft_path) if draft_path is not None else None,
                     n_max=n_max_t, temperatures=temps, reps=reps, seed=seed, n_predict=n_predict,
                     ctx_size=ctx_size, server_args=tuple(server_args),
                     min_acceptance=min_acceptance, min_speedup=min_speedup,
                     prompt_source=source, warmup=warmup, mode=mode, reasoning=reasoning_t,
                     context_depth=depths, p_min=p_min_t, dense_p_min=dense_t, spec_lists=lists)
    _check_modes(plan)
    _check_ctx(plan)
    return plan


def _check_ctx(plan: CheckPlan) -> None:
    """Refuse a context no server could hold, before one starts (see MAX_CTX)."""
    need = plan.server_ctx
    for m in plan.models:
        bound = min(MAX_CTX, max(m.context_length, CTX_ANY_MODEL))
        if need > bound:
            trained = f"was trained for {m.context_length:,} tokens" if m.context_length else "states no context_length"
            raise UsageError(f"the check needs a context of {need:,} tokens (", Setting("ctx_size"), ", the "
                             "deepest ", Setting("context_depth"), ", the longest prompt and ", Setting("n_predict"),
                             f"); {m.name} {trained} and mtpgraft asks for at most {bound:,} (llama-server "
                             "allocates the KV cache for the whole context up front): lower them")


def _check_modes(plan: CheckPlan) -> None:
    no_template = [m.name for m in plan.models if not m.chat_template]
    if plan.mode == "chat" and no_template:
        raise UsageError(f"chat mode needs a chat template (tokenizer.chat_template), and "
                         f"{', '.join(no_template)} has none: use raw mode")
    raw = [m.name for m in plan.models if plan.mode_for(m) == "raw"]
    if plan.reasoning and raw:
        raise UsageError(f"the thinking switch goes through the chat template; {', '.join(raw)} "
                         "runs in raw mode")
    if plan.mode != "raw" and not plan.server.has("--jinja") and len(raw) < len(plan.models):
        raise UsageError(f"{plan.server.path} has no --jinja option: chat mode needs it (use raw mode)")

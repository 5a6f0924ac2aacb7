"""Cases for scripts/fuzz.py: one mutated input (or odd argument list) and the command to run.

A case is data, so a failing one can be saved and replayed: `files` maps a path inside the
case directory to bytes to write, "seed:REL" (a hard link to a seed file, for what the case
leaves intact), "dir" or "symlink:TARGET". "@CASE@" in argv, symlink targets and JSON file
contents stands for the case directory. `protected` lists files that must be byte-for-byte
unchanged (and not replaced) afterwards: the input model and decoy files that options point at.
`expect_refusal` says why exit 0 would be wrong (weights holding NaN/Inf, an index entry
outside the model directory, config values that contradict the tensors).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from fuzz_mutate import Raw, mutate_binary, mutate_json
from fuzz_seeds import GGUF_SEEDS, MODEL_FILES, Layout, gguf_fields, has_nonfinite, safetensors_layout

KINDS = ("gguf", "safetensors", "index", "config", "tokenizer", "args")
CASE = "@CASE@"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
INDEX = "model.safetensors.index.json"
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size", "vocab_size")
BUDGET_OPTIONS = ("--target-size", "--target-bpw", "--target-vram", "--vram")


@dataclass
class Case:
    kind: str
    argv: list[str]
    files: dict[str, bytes | str]
    note: str
    protected: list[str] = field(default_factory=list)
    expect_refusal: str = ""
    expect_problem: str = ""  # inspect must list a problem (if it does not refuse the file)

    def to_json(self) -> dict:
        return {"kind": self.kind, "argv": self.argv, "note": self.note, "protected": self.protected,
                "expect_refusal": self.expect_refusal, "expect_problem": self.expect_problem,
                "files": {k: v if isinstance(v, str) else None for k, v in self.files.items()}}


class Seeds:
    """The seed files' bytes and layouts, read once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gguf = {n: (root / n).read_bytes() for n in GGUF_SEEDS}
        self.gguf_layout = {n: gguf_fields(b) for n, b in self.gguf.items()}
        self.st = (root / "model" / "model.safetensors").read_bytes()
        self.st_layout = safetensors_layout(self.st)
        self.shards = {s: (root / "sharded" / s).read_bytes() for s in SHARDS}
        self.shard_layout = {s: safetensors_layout(b) for s, b in self.shards.items()}
        self.json = {n: (root / "model" / n).read_bytes() for n in ("config.json", "tokenizer.json",
                                                                    "tokenizer_config.json", "special_tokens_map.json")}
        self.index = (root / "sharded" / INDEX).read_bytes()
        self.config = json.loads(self.json["config.json"])


def _model_links(prefix: str = "model", skip: tuple = ()) -> dict[str, str]:
    return {f"{prefix}/{n}": f"seed:model/{n}" for n in MODEL_FILES if n not in skip}


def _nonfinite_note(data: bytes, seed: bytes, lay: Layout) -> str:
    """The refusal a real conversion owes when `data` (a damaged copy of `seed`) still has the
    seed's layout but NaN/Inf in its weights."""
    if len(data) == len(seed) and data[:lay.data_start] == seed[:lay.data_start] and has_nonfinite(data, lay):
        return "weights hold NaN/Inf (needs --allow-nonfinite)"
    return ""


def _pick(rng: random.Random, weighted: list[tuple[float, str]]) -> str:
    return rng.choices([w[1] for w in weighted], [w[0] for w in weighted])[0]


def _qtype(rng: random.Random) -> list[str]:
    return ["-t", rng.choice(["Q8_0", "F16", "Q8_0", "Q4_K_M"])]


# ------------------------------------------------------------------ file kinds


def gen_gguf(rng: random.Random, s: Seeds) -> Case:
    name = rng.choice(GGUF_SEEDS)
    data, note = mutate_binary(rng, s.gguf[name], s.gguf_layout[name], "gguf")
    f = f"{CASE}/m.gguf"
    requant = ["--allow-requantize"] if name != "f16.gguf" or rng.random() < 0.2 else []
    cmd = _pick(rng, [(6, "inspect"), (1, "estimate"), (2, "dry"), (1, "real")])
    argv = {"inspect": ["inspect", f] + rng.sample(["--json", "--all", "--no-tensors"], rng.randint(0, 2)),
            "estimate": ["estimate-memory", "--model", f] + (["--json"] if rng.random() < 0.5 else []),
            "dry": ["quantize", f, "--dry-run", "-t", "Q8_0"] + requant,
            "real": ["quantize", f, "-t", "Q8_0", "-o", f"{CASE}/out.gguf"] + requant}[cmd]
    refuse = _nonfinite_note(data, s.gguf[name], s.gguf_layout[name]) if cmd == "real" else ""
    problem = _layout_fault(note)
    if problem and problem != "tensor count too low" and cmd in ("dry", "real"):
        refuse = refuse or problem  # llama.cpp would refuse the file: so must its conversion
    return Case("gguf", argv, {"m.gguf": data}, f"{name}: {note}", ["m.gguf"], refuse, problem)


def _layout_fault(note: str) -> str:
    """The layout fault a single mutation surely made (see fuzz_mutate._gguf_semantic), or ''."""
    m = re.fullmatch(r"(n_tensors|offset of '.*') (\d+) -> (-?\d+)(?: \(.*\))?", note)
    if not m or int(m.group(2)) == max(int(m.group(3)), 0):
        return ""
    if m.group(1) == "n_tensors":
        return "tensor count too high" if int(m.group(3)) > int(m.group(2)) else "tensor count too low"
    return "tensor offset moved"


def _model_commands(rng: random.Random, model: str, inspect_target: str) -> tuple[str, list[str]]:
    cmd = _pick(rng, [(4, "inspect"), (3, "dry"), (2, "real"), (1, "estimate")])
    return cmd, {"inspect": ["inspect", inspect_target] + (["--json"] if rng.random() < 0.5 else []),
                 "dry": ["quantize", model, "--dry-run"] + _qtype(rng),
                 "real": ["quantize", model, "-o", f"{CASE}/out.gguf"] + _qtype(rng),
                 "estimate": ["estimate-memory", "--model", model] + (["--context", "4096"] if rng.random() < 0.5 else [])
                 }[cmd]


def gen_safetensors(rng: random.Random, s: Seeds) -> Case:
    data, note = mutate_binary(rng, s.st, s.st_layout, "safetensors")
    files: dict[str, bytes | str] = {**_model_links(skip=("model.safetensors",)), "model/model.safetensors": data}
    cmd, argv = _model_commands(rng, f"{CASE}/model", f"{CASE}/model/model.safetensors")
    refuse = _nonfinite_note(data, s.st, s.st_layout) if cmd == "real" else ""
    return Case("safetensors", argv, files, note, list(files), refuse)


OUTSIDE = ("../outside.safetensors", f"{CASE}/outside.safetensors", "../../outside.safetensors",
           f"{CASE}/sharded/../outside.safetensors")


def index_values(path: tuple, rng: random.Random) -> list:
    if path and path[0] == "weight_map" and len(path) == 2:
        return list(OUTSIDE) + ["", ".", "..", "sub/x.safetensors", "[/x].safetensors", INDEX, "config.json",
                                f"{SHARDS[0]}/../{SHARDS[1]}", "x" * 5000, "\x00", SHARDS[1], SHARDS[0]]
    if path == ("weight_map",):
        return [{}, [], None, {"lm_head.weight": 5}]
    return []


def gen_index(rng: random.Random, s: Seeds) -> Case:
    files: dict[str, bytes | str] = {f"sharded/{n}": f"seed:sharded/{n}" for n in MODEL_FILES[:-1]}
    files.update({f"sharded/{n}": f"seed:sharded/{n}" for n in SHARDS + (INDEX,)})
    files["outside.safetensors"] = f"seed:sharded/{SHARDS[0]}"  # a real shard just outside the model dir
    refuse = ""
    if rng.random() < 0.7:
        data, note = mutate_json(rng, s.index, index_values)
        files[f"sharded/{INDEX}"] = data
        try:
            wm = json.loads(data.replace(CASE.encode(), b"/case")).get("weight_map", {})
            if isinstance(wm, dict) and any(isinstance(v, str) and v in OUTSIDE for v in wm.values()):
                refuse = "index entry outside the model directory"
        except (ValueError, AttributeError, RecursionError):
            pass
    else:
        shard = rng.choice(SHARDS)
        data, note = mutate_binary(rng, s.shards[shard], s.shard_layout[shard], "safetensors")
        files[f"sharded/{shard}"] = data
        note = f"{shard}: {note}"
    target = rng.choice([f"{CASE}/sharded", f"{CASE}/sharded/{INDEX}"])
    cmd, argv = _model_commands(rng, f"{CASE}/sharded", target)
    if cmd == "estimate":
        refuse = ""  # reads no shard
    return Case("index", argv, files, note, [k for k in files if k.startswith("sharded/") or k.startswith("outside")],
                refuse)


def config_values(path: tuple, rng: random.Random) -> list:
    ints = [0, -1, 1, 2, 3, 7, 10**9, 10**18, 2**63, 1.5, "4", "", True, False, None, [], {}, Raw("1e999"),
            Raw("NaN"), Raw("9" * 5000)]
    key = path[-1] if path else None
    if key in SHAPE_KEYS or key in ("max_position_embeddings", "sliding_window", "bos_token_id", "eos_token_id"):
        return ints
    if key in ("rms_norm_eps", "rope_theta", "factor"):
        return [0, -1, 0.0, 1e-300, Raw("1e999"), Raw("NaN"), "x", None, 10**30]
    if key == "architectures":
        return [["FooForCausalLM"], [], "LlamaForCausalLM", [1], ["[/x]"], None, ["LlamaForCausalLM"] * 2]
    if key in ("model_type", "dtype", "torch_dtype", "hidden_act"):
        return ["float99", "", 5, None, "[/x]", "gelu", "bfloat16", "float32"]
    if key in ("rope_parameters", "rope_scaling"):
        return [{"rope_type": "linear", "factor": 0}, {"rope_type": "llama3", "factor": -1}, {"rope_type": "[/x]"},
                None, [], {"rope_theta": Raw("NaN")}]
    if key in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
        return ["yes", 1, None, True, [True]]
    return []


def gen_config(rng: random.Random, s: Seeds) -> Case:
    data, note = mutate_json(rng, s.json["config.json"], config_values)
    files: dict[str, bytes | str] = {**_model_links(skip=("config.json",)), "model/config.json": data}
    cmd = _pick(rng, [(35, "dry"), (30, "real"), (35, "estimate")])
    model = f"{CASE}/model"
    argv = {"dry": ["quantize", model, "--dry-run"] + _qtype(rng),
            "real": ["quantize", model, "-o", f"{CASE}/out.gguf", "-t", rng.choice(["F16", "Q8_0"])],
            "estimate": ["estimate-memory", "--model", model] + rng.choice(
                [[], ["--context", "4096"], ["--vram", "8GB"], ["--json"]])}[cmd]
    refuse = ""
    if cmd != "estimate":
        try:
            new = json.loads(data)
        except (ValueError, RecursionError):
            new = None
        if isinstance(new, dict):
            changed = [k for k in SHAPE_KEYS if k in new and k in s.config
                       and (new[k] != s.config[k] or type(new[k]) is not type(s.config[k]))]
            if changed:
                refuse = f"config {changed[0]} contradicts the tensors"
    return Case("config", argv, files, note, list(files), refuse)


def tokenizer_values(path: tuple, rng: random.Random) -> list:
    key = path[-1] if path else None
    if key == "Regex" or key == "pattern":
        return ["[/]+", "(", "(a+)+$", r"\p{Zzz}", "", "(?<=x)y", "[" * 5000, {"String": "[/x]"}]
    if key == "type":
        return ["WordPiece", "Unigram", "", None, "[/x]", "Sequence", "BPE"]
    if key in ("vocab",):
        return [{}, {"a": -1}, {"a": 10**9, "b": 10**9}, [], {"[/x]": 0}]
    if key == "merges":
        return [["a"], [["a"]], ["x y z"], [], [1, 2], None]
    if key in ("added_tokens",):
        return [[{"id": 10**9, "content": "[/x]", "special": True}], [{"id": -1, "content": ""}], [{}], {}]
    if key in ("content", "bos_token", "eos_token", "pad_token", "unk_token"):
        return ["", "[/x]", "\x1b[31m", None, 5, {"content": None}, "<|not_in_vocab|>", "x" * 5000]
    if key in ("id", "model_max_length"):
        return [-1, 10**9, 2**64, "0", None, Raw("1e999")]
    if key == "chat_template":
        return ["{% for %}", "[/x]", "{{ raise_exception('x') }}", "", None, 5, "x" * 100_000]
    return []


def gen_tokenizer(rng: random.Random, s: Seeds) -> Case:
    name = rng.choice(["tokenizer.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])
    data, note = mutate_json(rng, s.json[name], tokenizer_values)
    files: dict[str, bytes | str] = {**_model_links(skip=(name,)), f"model/{name}": data}
    model = f"{CASE}/model"
    argv = (["quantize", model, "-o", f"{CASE}/out.gguf", "-t", "F16"] if rng.random() < 0.7
            else ["quantize", model, "--dry-run", "-t", "Q8_0"])
    return Case("tokenizer", argv, files, f"{name}: {note}", list(files))


# ------------------------------------------------------------------ arguments

SIZES = ["", " ", "-1", "0", "1e400", "1e300T", "1e999999", "nan", "inf", "-inf", "8GB", "8GiB", "4.2GB", "3MB",
         "1MB", "99999999999999999999999999999", "abc", "[/x]", "\u202e8GB", "8 GB", "0x10GB", "1e-9GB"]
INTS = ["", "-1", "0", "1", "abc", "1e9", "99999999999", "999999999999999999999999999999", "4096", "nan", "[/x]"]
TYPES = ["q4-k-m", "f16 ", "", "Q4_K_M", "q8_0", "Q99", "[/x]", "nan", "F16", "Q8_0", "IQ2_XXS", "Q4_K", "BF16",
         "TQ1_0", "MXFP4", "Q4_0_4_4", "q4_k_m\n", "Q8_0,Q4_0"]
PATHS = [f"{CASE}/out.gguf", "", " ", f"{CASE}/dir with space/out.gguf", f"{CASE}/new\nline.gguf",
         f"{CASE}/sub/../out.gguf", f"{CASE}/missing_dir/out.gguf", f"{CASE}/model", f"{CASE}/model/config.json",
         f"{CASE}/model/model.safetensors", f"{CASE}/link.gguf", f"{CASE}/precious.txt", CASE,
         f"{CASE}/[/x].gguf", f"{CASE}/out.safetensors", f"{CASE}/model/../out.gguf", f"{CASE}/m.gguf"]
DECOYS = [f"{CASE}/precious.txt", f"{CASE}/model/config.json", f"{CASE}/model", f"{CASE}/cache.json", "",
          f"{CASE}/no/such/dir/c.json", f"{CASE}/link.gguf", f"{CASE}/model/model.safetensors"]
UNKNOWN = ["--frobnicate", "-x", "--type=", "--", "-", "--dry-run=1", "--json=yes", "---", "--[/x]", "-tt"]
QUANTIZE_OPTIONS: dict[str, list[str]] = {
    "--type": TYPES, "--bits": INTS + ["8", "4", "16", "32", "7"],
    "--tensor-type": ["(attn_[kv]=Q8_0", "=", "x=", "[/x]=Q4_0", ".*=F16", "a=b=c", "attn=q99", "*=Q8_0",
                      "(?P<x>=Q8_0", r"blk\.0\..*=Q4_K", "(a+)+$=Q8_0"],
    "--output-tensor-type": TYPES, "--token-embedding-type": TYPES,
    "--context": INTS, "--target-size": SIZES, "--target-bpw": ["nan", "inf", "-1", "0", "1e999", "4.5", "abc", "8"],
    "--target-vram": SIZES, "--group-size": INTS + ["32", "64"], "--damp": ["nan", "-1", "inf", "0", "1e400", "x"],
    "--kv-type": ["q4", "", "[/x]", "Q8_0", "f16", "F99"], "--format": ["ggml", "", "safetensors", "SAFETENSORS", "[/x]"],
    "--scheme": ["gptq", "rtn", "", "absmax", "[/x]", "kquant"], "--vocab-pre": ["", "[/x]", "llama-bpe", "nope", "x" * 300],
    "--calibration": [f"{CASE}/nonexistent.txt", "", "[/x]", f"{CASE}/model"],
    "--calibration-samples": INTS, "--calibration-seqlen": INTS, "--device": ["cpu", "cuda:99", "", "[/x]", "tpu"],
    "--imatrix": [f"{CASE}/nonexistent.dat", f"{CASE}/model/config.json", f"{CASE}/m.gguf", CASE, "",
                  f"{CASE}/precious.txt"],
    "--save-imatrix": DECOYS, "--sensitivity-cache": DECOYS, "-o": PATHS,
}
QUANTIZE_FLAGS = ["--force", "--dry-run", "--pure", "--allow-requantize", "--no-fallback", "--sym", "--asym",
                  "--act-order", "--no-progress", "-f"]
MODELS = [f"{CASE}/model", f"{CASE}/m.gguf", f"{CASE}/nope", "", f"{CASE}/model/config.json", f"{CASE}/weird[/x]",
          f"{CASE}/sp ace", f"{CASE}/model/../model", f"{CASE}/new\nline", "[/x]", "-"]
INSPECT_PATHS = [f"{CASE}/m.gguf", f"{CASE}/sp ace.gguf", f"{CASE}/new\nline.gguf", f"{CASE}/[x].gguf",
                 f"{CASE}/weird[/x]", f"{CASE}/model", f"{CASE}/nope", "", f"{CASE}/..", f"{CASE}/model/config.json",
                 f"{CASE}/precious.txt", f"{CASE}/model/tokenizer.json", "/dev/null", f"{CASE}/dir with space",
                 f"{CASE}/link.gguf", "[/x]"]
ESTIMATE_OPTIONS: dict[str, list[str]] = {
    "--params": ["7B", "1e400", "1e300T", "1e999999", "-1", "0", "nan", "inf", "abc", "[/x]", "8", "7.5e9", "",
                 "999999999999999999999999999999", "1.5T", "70b", "1e-9"],
    "--context": INTS, "--layers": INTS, "--kv-heads": INTS, "--head-dim": INTS,
    "--kv-type": ["F16", "q8_0", "", "[/x]", "Q99", "f16 "], "--vram": SIZES, "--overhead": SIZES,
    "--model": [f"{CASE}/model", f"{CASE}/m.gguf", f"{CASE}/nope", "", f"{CASE}/precious.txt", f"{CASE}/weird[/x]"],
}
ESTIMATE_FLAGS = ["--json", "--kv-table", "--no-kv-table", "--runtime-overhead", "--no-runtime-overhead"]


def _options(rng: random.Random, table: dict[str, list[str]], flags: list[str], n: int) -> list[str]:
    out: list[str] = []
    for opt in rng.sample(list(table), min(n, len(table))):
        out += [opt, rng.choice(table[opt])]
    out += rng.sample(flags, rng.randint(0, 2))
    if rng.random() < 0.15:
        out.insert(rng.randrange(len(out) + 1), rng.choice(UNKNOWN))
    return out


def args_files() -> dict[str, bytes | str]:
    """The directory an argument case runs in: the model (twice more, under odd names), a GGUF
    under odd names, and decoys that output options may point at."""
    files: dict[str, bytes | str] = {**_model_links(), **_model_links("weird[/x]"), **_model_links("sp ace")}
    for name in ("m.gguf", "sp ace.gguf", "new\nline.gguf", "[x].gguf"):
        files[name] = "seed:writer.gguf"
    files["precious.txt"] = b"precious: must never change\n"
    files["link.gguf"] = "symlink:precious.txt"
    files["dir with space"] = "dir"
    return files


def gen_args(rng: random.Random, s: Seeds) -> Case:
    cmd = _pick(rng, [(5, "quantize"), (2, "inspect"), (3, "estimate-memory")])
    if cmd == "quantize":
        opts = _options(rng, QUANTIZE_OPTIONS, QUANTIZE_FLAGS, rng.randint(1, 4))
        # a real GPTQ run or a calibration pass takes minutes: those only as dry runs
        if ("--dry-run" not in opts and rng.random() < 0.75) or "gptq" in opts:
            opts.append("--dry-run")
        argv = ["quantize", rng.choice(MODELS)] + opts
    elif cmd == "inspect":
        argv = ["inspect", rng.choice(INSPECT_PATHS)] + rng.sample(["--json", "--all", "--no-tensors"], rng.randint(0, 2))
        if rng.random() < 0.15:
            argv.insert(rng.randrange(1, len(argv) + 1), rng.choice(UNKNOWN))
    else:
        argv = ["estimate-memory"] + _options(rng, ESTIMATE_OPTIONS, ESTIMATE_FLAGS, rng.randint(1, 4))
    files = args_files()
    protected = [k for k, v in files.items() if not (isinstance(v, str) and (v == "dir" or v.startswith("symlink:")))]
    return Case("args", argv, files, "odd arguments", protected)


GENERATORS = {"gguf": gen_gguf, "safetensors": gen_safetensors, "index": gen_index, "config": gen_config,
              "tokenizer": gen_tokenizer, "args": gen_args}

"""Cases for scripts/fuzz.py: one mutated input (or odd argument list) and the command to run.

A case is data, so a failing one can be saved and replayed: `files` maps a path inside the
case directory to bytes to write, "seed:REL" (a hard link to a seed file, for what the case
leaves intact), "dir" or "symlink:TARGET". "@CASE@" in argv, symlink targets and JSON file
contents stands for the case directory. `protected` lists files that must be byte-for-byte
unchanged (and not replaced) afterwards: the input model and decoy files that options point at.
`expect_refusal` says why exit 0 would be wrong (weights holding NaN/Inf, an index entry
outside the model directory, config values that contradict the tensors, an output path that is
a device, a FIFO, a directory or an input file, a sensitivity cache path holding something else).
More file specs: "fifo", "chardev:MAJOR:MINOR" (a device node of the case's own), "copy:SEED"
(a private copy, for a file the case may legitimately replace) and "hardlink:REL" (a second name
for a file listed before it). `timeout` overrides the run's per-case timeout (a real calibration
pass loads torch and runs the model).
"""

from __future__ import annotations

import json
import posixpath
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from fuzz_models import GENERATORS as MODEL_GENERATORS
from fuzz_models import model_files
from fuzz_mutate import TEMPLATES, Raw, mutate_binary, mutate_json, mutate_text
from fuzz_seeds import (GGUF_SEEDS, MODEL_FILES, Layout, gguf_fields, has_nonfinite, imatrix_dat_layout,
                        protobuf_layout, safetensors_layout)

KINDS = ("gguf", "safetensors", "index", "config", "tokenizer", "args", "output", "imatrix", "cache", "calibration",
         "family", "embedding", "quantized", "split", "eval")
HEAVY = ("imatrix", "cache", "calibration", "eval")  # seconds a case, not milliseconds: a third as many
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
    timeout: float | None = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "argv": self.argv, "note": self.note, "protected": self.protected,
                "expect_refusal": self.expect_refusal, "expect_problem": self.expect_problem,
                "timeout": self.timeout,
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
        self.chat_template = (root / "model" / "chat_template.jinja").read_bytes()
        self.spm = (root / "spm" / "tokenizer.model").read_bytes()
        self.spm_layout = protobuf_layout(self.spm)
        self.imatrix = {n: (root / n).read_bytes() for n in ("imatrix.gguf", "imatrix.dat")}
        self.imatrix_layout = {"imatrix.gguf": gguf_fields(self.imatrix["imatrix.gguf"]),
                               "imatrix.dat": imatrix_dat_layout(self.imatrix["imatrix.dat"])}
        self.cache = (root / "sensitivity.json").read_bytes()
        self.model_files = model_files(root)  # fuzz_models' seeds


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
            facts, seed = shape_facts(new), shape_facts(s.config)
            changed = [k for k in SHAPE_KEYS if facts is None or facts[k] != seed[k]]
            if changed:
                refuse = f"config {changed[0]} contradicts the tensors (as transformers reads it)"
    return Case("config", argv, files, note, list(files), refuse)


def shape_facts(cfg: dict) -> dict | None:
    """The shape facts transformers (5.x LlamaConfig) takes from a config.json, or None where
    it refuses the document. Its configs are strict: a shape fact must be an int (not a bool,
    float or string); head_dim absent or null is hidden_size // num_attention_heads and
    num_key_value_heads absent or null is num_attention_heads. Any other fact absent means
    transformers' default (4096 wide, 32 layers...), which no tensor of the tiny seed has, so
    it counts as a refusal too."""
    facts = {}
    for k in SHAPE_KEYS:
        v = cfg.get(k)
        if v is None and k in ("head_dim", "num_key_value_heads"):
            continue
        if type(v) is not int:
            return None
        facts[k] = v
    heads = facts["num_attention_heads"]
    facts.setdefault("num_key_value_heads", heads)
    facts.setdefault("head_dim", facts["hidden_size"] // heads if heads else None)
    return facts


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
    name = rng.choice(["tokenizer.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                       "chat_template.jinja", "tokenizer.model", "tokenizer.model"])
    if name == "tokenizer.model":  # the SentencePiece seed: the protobuf, damaged
        data, note = mutate_binary(rng, s.spm, s.spm_layout, "protobuf")
        files: dict[str, bytes | str] = {**_model_links(skip=("tokenizer.json",)), "model/tokenizer.model": data}
        if rng.random() < 0.5:  # with tokenizer.json beside it (Llama 2 repos) or alone
            files["model/tokenizer.json"] = "seed:model/tokenizer.json"
    elif name == "chat_template.jinja":
        data, note = mutate_text(rng, s.chat_template, TEMPLATES)
        files = {**_model_links(skip=(name,)), f"model/{name}": data}
    else:
        data, note = mutate_json(rng, s.json[name], tokenizer_values)
        files = {**_model_links(skip=(name,)), f"model/{name}": data}
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
    "--target-vram": SIZES, "--group-size": INTS + ["32", "64", "-1", "-2", "7", "16", "8", "2048", "65536"], "--damp": ["nan", "-1", "inf", "0", "1e400", "x"],
    "--kv-type": ["q4", "", "[/x]", "Q8_0", "f16", "F99"], "--format": ["ggml", "", "safetensors", "SAFETENSORS", "[/x]"],
    "--scheme": ["gptq", "rtn", "", "absmax", "[/x]", "kquant"], "--vocab-pre": ["", "[/x]", "llama-bpe", "nope", "x" * 300],
    "--calibration": [f"{CASE}/nonexistent.txt", "", "[/x]", f"{CASE}/model"],
    "--calibration-samples": INTS, "--calibration-seqlen": INTS, "--device": ["cpu", "cuda:99", "", "[/x]", "tpu"],
    "--imatrix": [f"{CASE}/nonexistent.dat", f"{CASE}/model/config.json", f"{CASE}/m.gguf", CASE, "",
                  f"{CASE}/precious.txt"],
    "--save-imatrix": DECOYS, "--sensitivity-cache": DECOYS, "-o": PATHS,
    "--split-max-size": SIZES + ["1B", "1", "1kB", "50GB", "2MB"], "--split-max-tensors": INTS + ["3", "2147483648"],
    "--candidates": ["k", "legacy,iq", "", ",", "K, LEGACY", "q8", "k,k", "iq,", "[/x]", "x" * 300, "all"],
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
        files[name] = "copy:writer.gguf"  # a copy: -o NAME --force may replace it
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
    replaceable = _forced_output(argv)
    # a sized plan measures every candidate type of every tensor: 20 s on the tiny model when
    # the machine is busy (legacy and i-quant candidates doubled it), a slow case, not a hang
    slow = 60.0 if set(BUDGET_OPTIONS) & set(argv) else None
    return Case("args", argv, files, "odd arguments", [k for k in protected if k not in replaceable], timeout=slow)


def _forced_output(argv: list[str]) -> set[str]:
    """Files of the case an odd quantize command may legitimately replace: its -o with --force,
    unless that is a file of the model it reads (a link is followed to its target)."""
    if argv[0] != "quantize" or not {"--force", "-f"} & set(argv) or "-o" not in argv[:-1]:
        return set()
    out = argv[argv.index("-o") + 1]
    if not out.startswith(CASE + "/"):
        return set()
    rel = posixpath.normpath(out[len(CASE) + 1:])
    rel = {"link.gguf": "precious.txt"}.get(rel, rel)
    model = posixpath.normpath(argv[1][len(CASE) + 1:]) if argv[1].startswith(CASE + "/") else None
    inside = model is not None and (rel == model or rel.startswith(model + "/"))
    return set() if inside else {rel}


# ------------------------------------------------------------------ output paths and side files

# -o targets in an output case: path (relative to the case dir, or absolute) -> what is there
#   device/fifo/dir: never replaced, a conversion into it must be refused
#   input: a file the run reads (or a link to one), refused; existing: refused without --force;
#   new: written; noparent: its directory does not exist
OUTPUT_TARGETS = {
    "/dev/null": "device", "/dev/full": "device", "devnull": "device", "devfull": "device", "link-null.gguf": "device",
    "fifo": "fifo", "dir with space": "dir", "link-dir.gguf": "dir", "": "dir", "model": "input",
    "model/model.safetensors": "input", "model/config.json": "input", "model/tokenizer.json": "input",
    "hard.gguf": "input", "link-model.gguf": "input", "in.gguf": "input", "imatrix.gguf": "input",
    "old.gguf": "existing", "precious.txt": "existing", "link.gguf": "existing", "m.gguf": "existing",
    "[x].gguf": "existing", "new\nline.gguf": "existing",
    "out.gguf": "new", "model/new.gguf": "new", "fresh\nname.gguf": "new", "out [x].gguf": "new",
    "sp ace/out.gguf": "new", "model/../out2.gguf": "new", " lead.gguf": "new", "-dash.gguf": "new",
    "missing/dir/out.gguf": "noparent", "[/x]/out.gguf": "noparent", "out [/x].gguf": "noparent",
    "dangling.gguf": "noparent",
    "x" * 300 + ".gguf": "noparent", "precious.txt/out.gguf": "noparent",
}
# --sensitivity-cache paths: -> "cache" (a real cache, may be rewritten), "none" (nothing there
# yet, or an empty file), or what else is there (refused, never written)
CACHE_TARGETS = {"cache.json": "cache", "new-cache.json": "none", "empty.json": "none", "precious.txt": "file",
                 "model/config.json": "input", "notcache.json": "file", "devnull": "device", "/dev/null": "device",
                 "fifo": "fifo", "dir with space": "dir", "link.gguf": "file", "missing/dir/c.json": "noparent"}


def output_files() -> dict[str, bytes | str]:
    files = args_files()
    files.update({"fifo": "fifo", "devnull": "chardev:1:3", "devfull": "chardev:1:7",
                  "link-null.gguf": "symlink:/dev/null", "link-model.gguf": f"symlink:{CASE}/model/model.safetensors",
                  "link-dir.gguf": f"symlink:{CASE}/dir with space", "dangling.gguf": f"symlink:{CASE}/nope/x.gguf",
                  "hard.gguf": "hardlink:model/model.safetensors", "old.gguf": "copy:q8.gguf",
                  "in.gguf": "copy:f16.gguf", "imatrix.gguf": "seed:imatrix.gguf", "cache.json": "copy:sensitivity.json",
                  "empty.json": b"", "notcache.json": b'{"a": 1}\n'})
    for name in ("m.gguf", "[x].gguf", "new\nline.gguf"):  # outputs --force may replace: not seeds' names
        files[name] = "copy:writer.gguf"
    return files


# targets naming the HF model's files: with a GGUF input they are just existing files
MODEL_FILE_TARGETS = ("model/model.safetensors", "model/config.json", "model/tokenizer.json", "hard.gguf",
                      "link-model.gguf")


def gen_output(rng: random.Random, s: Seeds) -> Case:
    """A conversion aimed at an odd output path (-o) and, in some, an odd --sensitivity-cache."""
    files = output_files()
    model = rng.choice([f"{CASE}/model"] * 3 + [f"{CASE}/in.gguf"])
    gguf_in = model.endswith("in.gguf")
    target = rng.choice([t for t in OUTPUT_TARGETS if not (gguf_in and t in MODEL_FILE_TARGETS)])
    what = "existing" if target == "in.gguf" and not gguf_in else OUTPUT_TARGETS[target]
    out = target if target.startswith("/") else f"{CASE}/{target}" if target else CASE
    force = rng.random() < 0.6
    argv = ["quantize", model, "-o", out] + (["--force"] if force else [])
    st = rng.random() < 0.06 and model.endswith("model")  # (imports torch: seconds)
    if st:
        argv += ["--format", "safetensors", "--bits", "8"]
    if target == "imatrix.gguf":
        argv += ["--imatrix", f"{CASE}/imatrix.gguf"]
    cache = None
    if rng.random() < 0.25 and not st:
        cache = rng.choice(list(CACHE_TARGETS))
        argv += ["--target-bpw", rng.choice(["4.5", "6"]), "--sensitivity-cache", f"{CASE}/{cache}"
                 if not cache.startswith("/") else cache]
    elif not st:
        argv += ["-t", rng.choice(["Q8_0", "F16", "Q4_0"])]
    refuse = {"device": "output is a device", "fifo": "output is a FIFO", "dir": "output is a directory",
              "input": "output is an input file", "noparent": "output directory does not exist",
              "existing": "output exists (no --force)" if not force else ""}.get(what, "")
    if st and what == "dir" and target in ("dir with space", "link-dir.gguf") and force:
        refuse = ""  # a safetensors output is a directory
    # what may change: the output itself (when it may be replaced) and a usable cache
    writable = {target} if (what == "new" or (what == "existing" and force)) else set()
    if target == "link.gguf" and force:
        writable.add("precious.txt")  # a link is followed: its target is the output
    if cache is not None:
        refuse = refuse or {"file": "sensitivity cache holds another file", "input": "sensitivity cache is an input",
                            "device": "sensitivity cache is a device", "fifo": "sensitivity cache is a FIFO",
                            "dir": "sensitivity cache is a directory", "noparent": ""}.get(CACHE_TARGETS[cache], "")
        if CACHE_TARGETS[cache] in ("cache", "none"):
            writable.add(cache)
    protected = [k for k, v in files.items() if k not in writable
                 and not (isinstance(v, str) and (v == "dir" or v.startswith("symlink:")))]
    note = f"-o {target!r} ({what}{', --force' if force else ''})" + (f", cache {cache!r}" if cache else "")
    return Case("output", argv, files, note, protected, refuse)


def gen_imatrix(rng: random.Random, s: Seeds) -> Case:
    """A damaged importance matrix (llama.cpp's GGUF or legacy .dat layout) given to --imatrix."""
    name = rng.choice(["imatrix.gguf", "imatrix.gguf", "imatrix.dat"])
    seed, lay = s.imatrix[name], s.imatrix_layout[name]
    data, note = mutate_binary(rng, seed, lay, "gguf" if name.endswith("gguf") else "dat")
    files: dict[str, bytes | str] = {**_model_links(), name: data}
    qtype = rng.choice(["Q4_K_M", "Q4_K_M", "Q2_K", "Q3_K_S", "Q5_K_M", "Q6_K", "Q4_0", "Q8_0"])
    real = rng.random() < 0.6
    argv = ["quantize", f"{CASE}/model", "-t", qtype, "--imatrix", f"{CASE}/{name}"] + \
        (["-o", f"{CASE}/out.gguf"] if real else ["--dry-run"])
    refuse = ""
    if real and ";" not in note and len(data) == len(seed) and has_nonfinite(data, lay):
        refuse = "importance statistics hold NaN/Inf"
    fault = _layout_fault(note) if name.endswith("gguf") else ""
    if fault and fault != "tensor count too low":
        refuse = refuse or f"imatrix GGUF layout: {fault}"  # llama.cpp refuses it: so must the reader
    return Case("imatrix", argv, files, f"{name}: {note}", list(files), refuse)


def cache_values(path: tuple, rng: random.Random) -> list:
    key = path[-1] if path else None
    if key == "format":
        return ["qconvert sensitivity cache", "", None, "other", 1]
    if key == "version":
        return [0, 1, 2, "1", None, 1.0, True, 10**30]
    if key == "models":
        return [{}, [], None, {"x": {"a|1|Q4_K|plain": "NaN"}}, {"x": []}]
    return [Raw("NaN"), Raw("Infinity"), -1, 0, 1e308, "x", None, [], {}]


def gen_cache(rng: random.Random, s: Seeds) -> Case:
    """A budgeted conversion (--target-bpw measures sensitivity) with a damaged cache."""
    data, note = mutate_json(rng, s.cache, cache_values)
    files: dict[str, bytes | str] = {**_model_links(), "cache.json": data}
    dry = rng.random() < 0.4
    argv = ["quantize", f"{CASE}/model", rng.choice(["--target-bpw", "--target-size"]), "", "--sensitivity-cache",
            f"{CASE}/cache.json"] + (["--dry-run"] if dry else ["-o", f"{CASE}/out.gguf"])
    argv[3] = rng.choice(["4.5", "3.5", "6"]) if argv[2] == "--target-bpw" else rng.choice(["2.5MB", "3MB", "2MB"])
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        doc = None
    # a cache carries the marker; one written before the marker existed is {version, models}
    ours = not data.strip() or isinstance(doc, dict) and (
        doc.get("format") == "qconvert sensitivity cache"
        or set(doc) == {"version", "models"} and type(doc["version"]) is int and isinstance(doc["models"], dict))
    protected = list(files) if dry or not ours else [k for k in files if k != "cache.json"]
    refuse = "" if ours else "sensitivity cache path holds something else"
    return Case("cache", argv, files, note, protected, refuse)


CALIBRATION_FILES = {"fifo": "fifo", "dir": "dir", "/dev/zero": None, "/dev/urandom": None, "/dev/null": None,
                     "devnull": "chardev:1:3", "link-zero": "symlink:/dev/zero"}


def gen_calibration(rng: random.Random, s: Seeds) -> Case:
    """Odd calibration text: empty, binary, one huge line, not UTF-8, a FIFO, a device."""
    files: dict[str, bytes | str] = {**_model_links()}
    if rng.random() < 0.75:
        data, note = mutate_text(rng, s.chat_template * 20)
        files["cal.txt"] = data
        path = f"{CASE}/cal.txt"
    else:
        name = rng.choice(list(CALIBRATION_FILES))
        if CALIBRATION_FILES[name]:
            files[name] = CALIBRATION_FILES[name]
        path, note = (name if name.startswith("/") else f"{CASE}/{name}"), f"--calibration {name}"
    real = rng.random() < 0.4
    argv = ["quantize", f"{CASE}/model", "-t", rng.choice(["Q4_K_M", "Q2_K"]), "--calibration", path,
            "--calibration-samples", rng.choice(["1", "2", "4"]), "--calibration-seqlen", rng.choice(["8", "32", "64"])]
    argv += ["-o", f"{CASE}/out.gguf"] if real else ["--dry-run"]
    refuse = ""
    if real and rng.random() < 0.3:
        save = rng.choice(["im.gguf", "im.dat", "model/config.json", "cal.txt", "/dev/null", "none/im.gguf"])
        argv += ["--save-imatrix", save if save.startswith("/") else f"{CASE}/{save}"]
        if save in ("model/config.json", "/dev/null") or save in files:
            refuse = f"--save-imatrix {save} is an input or a device"
    protected = [k for k, v in files.items() if not (isinstance(v, str) and (v in ("dir", "fifo")
                                                                            or v.startswith("symlink:")))]
    return Case("calibration", argv, files, note, protected, refuse, timeout=30.0 if real else None)


GENERATORS = {"gguf": gen_gguf, "safetensors": gen_safetensors, "index": gen_index, "config": gen_config,
              "tokenizer": gen_tokenizer, "args": gen_args, "output": gen_output, "imatrix": gen_imatrix,
              "cache": gen_cache, "calibration": gen_calibration, **MODEL_GENERATORS}

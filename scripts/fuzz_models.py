"""Cases for scripts/fuzz.py aimed at this session's inputs: mixture-of-experts and newer
dense families, sentence-transformers embedding models, FP8 / GPTQ checkpoints, GGUF split
sets and `qconvert eval`.

Seeds (WORKDIR/seeds/models/, built once in a clean child by `make_model_seeds`, from the
test suite's own fixture builders, so the files are what transformers writes):
  qwen3_moe  8 experts, top-2, bf16, two shards      phi3    Phi-3 with longrope factor tables
  gemma2     alternating sliding window, softcaps      bert    all-MiniLM-style, WordPiece, pooling
  fp8        FP8 e4m3 with 96x80 weight_scale_inv      gptq    AutoGPTQ int4, act-order groups
  split/     the tiny model as an F16 split set of 4 files (s-0000N-of-00004.gguf)

Kinds: family (config.json values of the MoE/new families, expert tensors missing from the
index), embedding (modules.json, pooling config, sentence_bert_config, WordPiece vocab),
quantized (scale tensors' shapes/dtypes, quantization_config), split (a member missing,
renamed, another set's, split.* keys edited), eval (--text binary/huge/empty, --ctx,
--max-windows, --plot paths; and runs that should work: NaN weights in a model or the
reference, a reference linked under another name, an architecture llama.cpp refuses, --ctx
past the training length)."""

from __future__ import annotations

import json
import random
import struct
import sys
from pathlib import Path

from fuzz_mutate import JSON_SPECIAL, Raw, mutate_binary, mutate_json
from fuzz_seeds import gguf_fields

ROOT = Path(__file__).resolve().parents[1]
CASE = "@CASE@"
MODELS = ("qwen3_moe", "phi3", "gemma2", "bert", "fp8", "gptq")
SPLIT = [f"s-{i:05d}-of-00004.gguf" for i in range(1, 5)]


def make_model_seeds(seeds: str) -> None:
    """Build seeds/models/* (see module doc); run in a clean child (fuzz_runner.call_clean)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import os
    import shutil

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import qconvert
    from fixtures import embedding_models, family_models, moe_models, quantized_models, tiny_models

    out = Path(seeds) / "models"
    tok = tiny_models.train_tokenizer()
    moe_models.build("qwen3_moe", out / "qwen3_moe", tok)
    family_models.build("phi_longrope", out / "phi3", tok)
    family_models.build("gemma2", out / "gemma2", tok)
    embedding_models.build("minilm", out / "bert")
    example = ROOT / "examples" / "tiny-llama"
    for kind, name in (("fp8_block", "fp8"), ("gptq", "gptq")):
        quantized_models.build(kind, example, out / name)
    (out / "split").mkdir()
    parts = qconvert.quantize(example, out / "split" / "s.gguf", type="F16", split_max_tensors=10).files
    assert [p.name for p in parts] == SPLIT, parts
    shutil.copyfile(Path(seeds) / "q8.gguf", out / "split" / "other.gguf")


def model_files(seeds: Path) -> dict[str, list[str]]:
    """name -> its files (relative to the model's directory)."""
    base = seeds / "models"
    return {n: sorted(str(p.relative_to(base / n)) for p in (base / n).rglob("*") if p.is_file())
            for n in MODELS + ("split",)}


def _links(s, name: str, skip=()) -> dict[str, bytes | str]:
    return {f"model/{f}": f"seed:models/{name}/{f}" for f in s.model_files[name] if f not in skip}


def _read(s, name: str, rel: str) -> bytes:
    return (s.root / "models" / name / rel).read_bytes()


def _commands(rng: random.Random, real_types=("F16", "Q8_0", "Q4_K_M")) -> list[str]:
    model = f"{CASE}/model"
    return rng.choice([["quantize", model, "--dry-run", "-t", rng.choice(real_types)],
                       ["quantize", model, "-o", f"{CASE}/out.gguf", "-t", rng.choice(real_types)],
                       ["quantize", model, "-o", f"{CASE}/out.gguf", "-t", rng.choice(real_types)],
                       ["estimate-memory", "--model", model, "--context", "2048"], ["inspect", model]])


# ------------------------------------------------------------------ family configs

EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
COUNTS = [0, -1, 1, 2, 7, 9, 16, 10**6, 2**31, 2**63, 1.5, "8", None, True, [], Raw("1e999"), Raw("NaN")]


def family_values(path: tuple, rng: random.Random) -> list:
    key = path[-1] if path else None
    if key in EXPERT_KEYS or key in ("num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
                                     "shared_expert_intermediate_size", "sliding_window", "query_pre_attn_scalar"):
        return COUNTS
    if key in ("layer_types", "mlp_only_layers"):
        return [[], ["sliding_attention"], ["full_attention"] * 99, ["nope"] * 2, [0, 1], None, "sliding_attention",
                [2, 5], [-1]]
    if key in ("long_factor", "short_factor"):
        return [[], [1.0], [1.0] * 1000, [Raw("NaN")] * 16, ["x"] * 16, None, 1.0, [-1.0] * 16, [0.0] * 16]
    if key in ("rope_scaling", "rope_parameters"):
        return [{"rope_type": "longrope", "long_factor": [1.0], "short_factor": [1.0]},
                {"rope_type": "yarn", "factor": Raw("NaN")}, {"rope_type": "dynamic", "factor": -2},
                {"type": "su", "long_factor": [], "short_factor": []}, {"rope_type": "llama3", "factor": 8},
                {"rope_type": "linear"}, {"rope_type": "longrope"}, None, [], "yarn"]
    if key in ("final_logit_softcapping", "attn_logit_softcapping", "original_max_position_embeddings",
               "partial_rotary_factor", "factor", "rope_theta"):
        return [0, -1, Raw("NaN"), Raw("1e999"), None, "x", 10**30, 1e-300]
    return []


def _expected_experts(cfg) -> int | None:
    return next((cfg[k] for k in EXPERT_KEYS if isinstance(cfg, dict) and k in cfg), None)


def gen_family(rng: random.Random, s) -> "Case":
    from fuzz_cases import Case

    name = rng.choice(["qwen3_moe", "qwen3_moe", "phi3", "gemma2"])
    index = "model.safetensors.index.json"
    cfg_raw = _read(s, name, "config.json")
    refuse = ""
    if name == "qwen3_moe" and rng.random() < 0.3:  # an expert's tensors gone, or one of the wrong shape
        doc = json.loads(_read(s, name, index))
        layer, expert = rng.randrange(2), rng.choice([0, 7, 3])
        hit = sorted(k for k in doc["weight_map"] if f"layers.{layer}.mlp.experts.{expert}." in k)
        shard = doc["weight_map"][hit[0]]
        reshape = rng.random() < 0.4
        if not reshape and rng.random() < 0.5:
            hit = hit[:1]
        data = _rewrite_tensors(_read(s, name, shard), hit[:1] if reshape else hit, reshape)
        files = {**_links(s, name, skip=(shard,)), f"model/{shard}": data}
        if not reshape and rng.random() < 0.5:  # and from the index too
            for k in hit:
                doc["weight_map"].pop(k, None)
            files[f"model/{index}"] = json.dumps(doc).encode()
        note = (f"{hit[0]} reshaped" if reshape else f"{len(hit)} tensors of expert {expert}, layer {layer} gone")
        refuse = "expert tensors missing or of the wrong shape"
    else:
        data, note = mutate_json(rng, cfg_raw, family_values)
        files = {**_links(s, name, skip=("config.json",)), "model/config.json": data}
        try:
            new = json.loads(data)
        except (ValueError, RecursionError):
            new = None
        old = json.loads(cfg_raw)
        if name == "qwen3_moe" and isinstance(new, dict) and _expected_experts(new) != _expected_experts(old) \
                and type(_expected_experts(new)) is int:
            refuse = "expert count contradicts the tensors"
    argv = _commands(rng)
    if argv[0] != "quantize" or "--dry-run" in argv:
        refuse = ""  # estimate/inspect read no expert tensors; a dry run plans from shapes
    return Case("family", argv, files, f"{name}: {note}", list(files), refuse if "-o" in argv else "")


def _rewrite_tensors(raw: bytes, names: list[str], reshape: bool) -> bytes:
    """A safetensors file without `names` (packed again), or with the first of them given
    another shape of the same size ([a, b] -> [a / 2, 2 b])."""
    n = struct.unpack_from("<Q", raw)[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    out, blobs, at = ({"__metadata__": meta} if meta else {}), [], 0
    for k, e in header.items():
        if k in names and not reshape:
            continue
        b, end = e["data_offsets"]
        shape = e["shape"]
        if k in names and reshape:
            shape = [shape[0] // 2, shape[1] * 2]
        out[k] = {"dtype": e["dtype"], "shape": shape, "data_offsets": [at, at + end - b]}
        blobs.append(raw[8 + n + b:8 + n + end])
        at += end - b
    text = json.dumps(out).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


# ------------------------------------------------------------------ embedding models

def embedding_values(path: tuple, rng: random.Random) -> list:
    key = path[-1] if path else None
    if key == "type":
        return ["sentence_transformers.models.Pooling", "sentence_transformers.models.Dense", "x", "", None, 1,
                "sentence_transformers.models.Normalize", "WordPiece", "Unigram", "BPE"]
    if key == "path":
        return ["", "..", "../../etc", "/etc", "1_Pooling/../..", "nope", "\x00", None, 5]
    if key and str(key).startswith("pooling_mode"):
        return [True, False, None, 1, "yes"]
    if key in ("word_embedding_dimension", "max_seq_length", "max_input_chars_per_word"):
        return [0, -1, 1, 10**9, 2**63, None, "384", Raw("NaN")]
    if key == "vocab":
        return [{}, {"[UNK]": 0}, {"[CLS]": -1}, {"a": 10**9}, [], {"[PAD]": 0, "[UNK]": 0}]
    if key in ("unk_token", "continuing_subword_prefix", "cls_token", "sep_token"):
        return ["", "##", "[NOPE]", None, 5, "x" * 5000]
    if key == "do_lower_case" or key == "lowercase":
        return [None, "yes", 1, True, False]
    return []


EMBEDDING_FILES = ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json", "tokenizer.json",
                   "tokenizer_config.json", "config.json", "vocab.txt")


def gen_embedding(rng: random.Random, s) -> "Case":
    from fuzz_cases import Case

    target = rng.choice(EMBEDDING_FILES)
    files = _links(s, "bert", skip=(target,))
    if target == "vocab.txt":  # a WordPiece vocab file beside (or instead of) tokenizer.json
        vocab = json.loads(_read(s, "bert", "tokenizer.json"))["model"]["vocab"]
        lines = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        op = rng.randrange(5)
        if op == 0:
            lines = lines[:rng.choice([0, 1, 3])]
        elif op == 1:
            lines = lines + lines[:50]
        elif op == 2:
            lines[rng.randrange(len(lines))] = rng.choice(["", "\x00", "a b", "\ud800x", "[/x]"])
        elif op == 3:
            rng.shuffle(lines)
        data = "\n".join(lines).encode("utf-8", "surrogatepass") if op != 4 else bytes(rng.randrange(256)
                                                                                       for _ in range(3000))
        note = f"vocab.txt op {op}"
        if rng.random() < 0.5:
            files.pop("model/tokenizer.json")
            note += ", no tokenizer.json"
    elif target == "1_Pooling/config.json" and rng.random() < 0.2:
        data, note = b"", "empty pooling config"
    else:
        data, note = mutate_json(rng, _read(s, "bert", target), embedding_values)
    files[f"model/{target}"] = data
    argv = _commands(rng, ("F16", "Q8_0"))
    return Case("embedding", argv, files, f"{target}: {note}", [k for k in files])


# ------------------------------------------------------------------ FP8 / GPTQ checkpoints

SCALE_SHAPES = [[], [1], [0, 4], [3, 3], [1, 1, 1], [2**40, 2], [-1], [1.5]]
SCALE_DTYPES = ["F32", "BF16", "F16", "F8_E4M3", "I32", "I8", "U8", "F64", "BOOL"]


def _scale_header_mutation(rng: random.Random, raw: bytes, kind: str) -> tuple[bytes, str]:
    """Re-type or re-shape one scale/packed tensor in the header, keeping every byte range
    (so only the reader's checks stand between the file and a wrong decode)."""
    n = struct.unpack_from("<Q", raw)[0]
    header = json.loads(raw[8:8 + n])
    aims = ("weight_scale_inv",) if kind == "fp8" else ("scales", "qzeros", "g_idx", "qweight")
    names = [k for k in header if k != "__metadata__" and k.endswith(aims)]
    name = rng.choice(names)
    e = header[name]
    b, end = e["data_offsets"]
    if rng.random() < 0.5:
        old, e["dtype"] = e["dtype"], rng.choice(SCALE_DTYPES)
        note = f"{name} dtype {old} -> {e['dtype']}"
    else:
        old, e["shape"] = e["shape"], rng.choice(SCALE_SHAPES + [e["shape"][::-1], [int(x) * 2 for x in e["shape"]]])
        note = f"{name} shape {old} -> {e['shape']}"
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n:], note


def quantization_values(path: tuple, rng: random.Random) -> list:
    key = path[-1] if path else None
    if key == "weight_block_size":
        return [[], [0, 0], [128], [-1, 128], [10**9, 10**9], [1.5, 2], None, "128", [96, 80, 1]]
    if key in ("bits", "group_size"):
        return [0, -1, 3, 8, 2, 16, 7, 10**9, None, "4", 1.5]
    if key in ("quant_method", "fmt", "checkpoint_format", "version"):
        return ["fp8", "gptq", "awq", "bitsandbytes", "", None, "e5m2", "nvfp4", "marlin", "gemv"]
    if key in ("desc_act", "sym", "zero_point"):
        return [None, "yes", 1, True, False]
    return []


def gen_quantized(rng: random.Random, s) -> "Case":
    from fuzz_cases import Case

    kind = rng.choice(["fp8", "gptq"])
    target = "model.safetensors" if rng.random() < 0.65 else "config.json"
    files = _links(s, kind, skip=(target,))
    raw = _read(s, kind, target)
    if target == "config.json":
        doc = json.loads(raw)
        qc = json.dumps(doc.get("quantization_config", {})).encode()
        data, note = mutate_json(rng, qc, quantization_values)
        try:
            doc["quantization_config"] = json.loads(data)
        except (ValueError, RecursionError):
            doc["quantization_config"] = rng.choice(JSON_SPECIAL[:12])
        data = json.dumps(doc).encode()
        refuse = ""
    elif rng.random() < 0.7:
        data, note = _scale_header_mutation(rng, raw, kind)
        old, new = note.split(" -> ")[0].split(" ", 2)[2], note.split(" -> ")[1]
        refuse = "scale tensor of the wrong shape or dtype" if old != new else ""
    else:
        from fuzz_seeds import safetensors_layout

        data, note = mutate_binary(rng, raw, safetensors_layout(raw), "safetensors")
        refuse = ""
    files[f"model/{target}"] = data
    argv = _commands(rng, ("F16", "Q8_0", "Q4_K_M"))
    real = argv[0] == "quantize" and "--dry-run" not in argv
    return Case("quantized", argv, files, f"{kind} {target}: {note}", list(files), refuse if real else "")


# ------------------------------------------------------------------ split sets

def _set_u16(raw: bytes, key: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Rewrite the value of a split key (u16 split.no / split.count or i32 split.tensors.count)."""
    i = raw.find(key)
    at = i + len(key) + 4  # value type u32, then the value
    size = 4 if key.endswith(b"tensors.count") else 2
    fmt = "<i" if size == 4 else "<H"
    old = struct.unpack_from(fmt, raw, at)[0]
    new = rng.choice([0, 1, 2, 3, 5, 99, 65535] if size == 2 else [0, -1, 1, 10**6, old + 1, old - 1, 2**31 - 1])
    out = bytearray(raw)
    struct.pack_into(fmt, out, at, new)
    return bytes(out), f"{key.decode()} {old} -> {new}"


def gen_split(rng: random.Random, s) -> "Case":
    from fuzz_cases import Case

    files: dict[str, bytes | str] = {n: f"seed:models/split/{n}" for n in SPLIT}
    op = rng.randrange(6)
    refuse = "the split set is damaged"
    if op == 0:
        gone = rng.choice(SPLIT)
        del files[gone]
        note = f"{gone} missing"
    elif op == 1:
        files[SPLIT[rng.randrange(1, 4)]] = "seed:q8.gguf"
        note = "a member replaced by a file on its own"
    elif op == 2:
        n = rng.randrange(4)
        key = rng.choice([b"split.no", b"split.count", b"split.tensors.count"])
        data, note = _set_u16(_read(s, "split", SPLIT[n]), key, rng)
        files[SPLIT[n]] = data
        old, new = note.rsplit(" ", 3)[1], note.rsplit(" ", 1)[1]
        if old == new or (n == 0 and key == b"split.count" and new == "1") or (n and key == b"split.tensors.count"):
            refuse = ""  # unchanged, a first member now on its own, or a count llama.cpp reads from the first only
        note = f"{SPLIT[n]}: {note}"
    elif op == 3:
        n = rng.randrange(4)
        data, note = mutate_binary(rng, _read(s, "split", SPLIT[n]), gguf_fields(_read(s, "split", SPLIT[n])), "gguf")
        files[SPLIT[n]] = data
        note, refuse = f"{SPLIT[n]}: {note}", ""
    elif op == 4:  # the set under other names: '..' or a renamed prefix
        prefix = rng.choice(["..", "a..b", "x-00001-of-00004", " s", "s.gguf"])
        files = {n.replace("s-", prefix + "-", 1): f"seed:models/split/{n}" for n in SPLIT}
        note, refuse = f"set renamed with prefix {prefix!r}", ""
    else:
        files[SPLIT[rng.randrange(4)]] = "symlink:" + rng.choice(["/dev/zero", f"{CASE}/loop", "nowhere"])
        files["loop"] = f"symlink:{CASE}/loop"
        note = "a member is a link to a device, itself or nothing"
    names = [n for n, v in files.items() if n.endswith(".gguf")]
    given = f"{CASE}/" + rng.choice(names) if names else f"{CASE}/{SPLIT[0]}"
    cmd = rng.choice(["inspect", "inspect", "dry", "real", "estimate"])
    argv = {"inspect": ["inspect", given] + (["--json"] if rng.random() < 0.5 else []),
            "dry": ["quantize", given, "--dry-run", "-t", "Q8_0"],
            "real": ["quantize", given, "-t", "Q8_0", "-o", f"{CASE}/out.gguf"],
            "estimate": ["estimate-memory", "--model", given]}[cmd]
    protected = [k for k, v in files.items() if not (isinstance(v, str) and v.startswith("symlink:"))]
    return Case("split", argv, files, note, protected, refuse if cmd == "real" else "")


# ------------------------------------------------------------------ eval

EVAL_TEXTS = {"empty": b"", "binary": bytes(range(256)) * 40, "nul": b"hello\x00world " * 500,
              "huge-line": b"x" * 3_000_000, "bom": b"\xef\xbb\xbf" + b"the text goes on. " * 400,
              "latin1": "caf\xe9 na\xefve ".encode("latin-1") * 300, "one-word": b"word",
              "controls": "\x1b[31mred\u202e \x07".encode() * 500, "ok": b"the quick brown fox jumps. " * 400}


def nan_tail(gguf: bytes, n: int = 1 << 16) -> bytes:
    """The GGUF with its last n bytes (the end of its last tensor's data) set to 0xff 0x7f
    pairs: NaN read as F16, BF16 or F32, so the model's logits turn NaN."""
    return gguf[:-n] + b"\xff\x7f" * (n // 2)


def alien_arch(gguf: bytes) -> bytes:
    """The GGUF with general.architecture's value overwritten (same length): llama.cpp
    refuses it ("unknown model architecture"), qconvert's header reader does not."""
    key = b"general.architecture"
    at = gguf.index(key) + len(key) + 4  # past the value type
    n = struct.unpack_from("<Q", gguf, at)[0]
    return gguf[:at + 8] + b"z" * n + gguf[at + 8 + n:]


def gen_eval_sound(rng: random.Random, s) -> "Case":
    """Runs that should work, or fail for one stated reason: a reference or model whose logits
    are NaN (refused / a warning), a reference linked under a name without .gguf, an
    architecture llama.cpp does not know, --ctx past the training length."""
    from fuzz_cases import Case

    f16 = s.gguf["f16.gguf"]
    files: dict[str, bytes | str] = {"f16.gguf": "seed:f16.gguf", "q8.gguf": "seed:q8.gguf",
                                     "nan.gguf": nan_tail(f16), "alien.gguf": alien_arch(f16),
                                     "ref.bin": f"symlink:{CASE}/f16.gguf",
                                     "t.txt": b"the quick brown fox jumps over the lazy dog.\n" * 2000}
    model = rng.choice(["q8.gguf", "q8.gguf", "nan.gguf", "alien.gguf", "ref.bin"])
    ref = rng.choice(["f16.gguf", "ref.bin", "nan.gguf", None])
    argv = ["eval", f"{CASE}/{model}", "--threads", "1", "--max-windows", rng.choice(["1", "2"]),
            "--ctx", rng.choice(["64", "128", "1024"])]
    if ref is not None and ref != model:
        argv += ["-r", f"{CASE}/{ref}"]
    if rng.random() < 0.5:
        argv += ["--text", f"{CASE}/t.txt"]
    if rng.random() < 0.3 and ref is not None and ref != model:
        argv += ["--plot", f"{CASE}/kl.png"]
    if rng.random() < 0.5:
        argv.append("--json")
    refuse = "a reference with NaN logits" if "-r" in argv and ref == "nan.gguf" else ""
    refuse = refuse or ("an architecture llama.cpp does not know" if model == "alien.gguf" else "")
    protected = ["f16.gguf", "q8.gguf", "nan.gguf", "alien.gguf", "t.txt"]
    return Case("eval", argv, files, f"sound: {model} -r {ref}", protected, refuse, timeout=60.0)


def gen_eval(rng: random.Random, s) -> "Case":
    from fuzz_cases import Case

    if rng.random() < 0.4:
        return gen_eval_sound(rng, s)
    files: dict[str, bytes | str] = {"f16.gguf": "seed:f16.gguf", "q8.gguf": "seed:q8.gguf",
                                     **{n: f"seed:models/split/{n}" for n in SPLIT}}
    text = rng.choice(list(EVAL_TEXTS))
    files["t.txt"] = EVAL_TEXTS[text] if text != "ok" or rng.random() < 0.5 else b"the quick brown fox. " * 3000
    files["fifo"], files["dir"], files["precious.txt"] = "fifo", "dir", b"precious\n"
    models = rng.sample([f"{CASE}/q8.gguf", f"{CASE}/{SPLIT[1]}", f"{CASE}/q8.gguf", f"{CASE}/{SPLIT[2]}",
                         f"{CASE}/f16.gguf", f"{CASE}/nope.gguf", f"{CASE}/t.txt", "/dev/null"], rng.choice([1, 1, 2]))
    argv = ["eval", *models, "--threads", "1"]
    if rng.random() < 0.7:
        argv += ["-r", rng.choice([f"{CASE}/f16.gguf", f"{CASE}/{SPLIT[0]}", f"{CASE}/q8.gguf"])]
    if rng.random() < 0.8:
        argv += ["--text", rng.choice([f"{CASE}/t.txt"] * 5 + [f"{CASE}/fifo", f"{CASE}/dir", "/dev/zero", ""])]
    argv += ["--ctx", rng.choice(["64"] * 6 + ["128", "0", "-1", "3", "99999999999", "x"])]
    argv += ["--max-windows", rng.choice(["1"] * 6 + ["2", "0", "-5", "10**9"])]
    protected = ["f16.gguf", "q8.gguf", "t.txt", "precious.txt"] + SPLIT
    refuse = ""
    if rng.random() < 0.4:
        plot = rng.choice(["p.png", "precious.txt", "t.txt", "f16.gguf", "dir", "fifo", "/dev/null", "no/p.png",
                           "-p.png", "sp ace.png"])
        argv += ["--plot", plot if plot.startswith("/") else f"{CASE}/{plot}"]
        if plot in ("precious.txt", "t.txt", "f16.gguf", "dir", "fifo", "/dev/null"):
            refuse = f"--plot {plot} is an input, a device or exists"
    if rng.random() < 0.5:
        argv.append("--json")
    return Case("eval", argv, files, f"--text {text}", protected, refuse, timeout=60.0)


GENERATORS = {"family": gen_family, "embedding": gen_embedding, "quantized": gen_quantized, "split": gen_split,
              "eval": gen_eval}

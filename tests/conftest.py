import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEMO = ROOT / "data" / "demo"

# The demo config pins CPU numerics (mmie/numerics.py); tests run its code in this process too, so
# the variables must be set before anything imports torch.
from mmie.numerics import PORTABLE_ENV  # noqa: E402

os.environ.update(PORTABLE_ENV)


def write_lines(path: Path, lines: list, raw: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw:
        path.write_bytes(b"".join(lines))
    else:
        path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def demo_config():
    from mmie.config import load

    return load(ROOT / "config.yaml")


@pytest.fixture(scope="session")
def demo_texts():
    def read(name):
        return [json.loads(line)["text"] for line in (DEMO / name).read_text(encoding="utf-8").splitlines() if line]
    return {"hi": read("forget_hi.jsonl"), "en": read("retain_en.jsonl"), "ur": read("neighbours/ur.jsonl"),
            "pa": read("neighbours/pa.jsonl"), "bn": read("neighbours/bn.jsonl")}


@pytest.fixture(scope="session")
def tiny_lm(demo_texts):
    """A tiny random Qwen2 with a BPE tokenizer trained on part of the demo corpus (seconds on a CPU)."""
    import torch

    from mmie.model.demo import build_model, train_tokenizer

    torch.manual_seed(0)
    tok = train_tokenizer(demo_texts["hi"][:150] + demo_texts["en"][:150], vocab_size=400, max_length=128)
    cfg = {"hidden_size": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate_size": 64, "max_position": 128}
    model = build_model(cfg, tok).eval()
    return model, tok


# ----------------------------------------------------------------------------- the reduced workflow
SENTINEL = "sentinel-key-3f9c2a"
SENTINEL_ENV = {"GEMINI_API_KEY": SENTINEL, "GOOGLE_API_KEY": SENTINEL}
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
EXP = "t"
SETS = ["forget", "retain", "romanized", "mixed", "adversarial", "ur", "pa", "bn", "comprehension", "yes_no"]


def reduced_config(workdir: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["experiment"] = EXP
    cfg["seeds"] = [0]
    for key in ("forget", "retain", "forget_romanized", "mixed", "adversarial", "lid_check", "lid_audit", "yes_no",
                "translations", "gibberish"):
        cfg["data"][key] = str(ROOT / cfg["data"][key])
    cfg["data"]["neighbours"] = {k: str(ROOT / v) for k, v in cfg["data"]["neighbours"].items()}
    cfg["eval"] = {"max_prompts": 6}
    cfg["generation"]["max_new_tokens"] = 12
    cfg["demo_model"] = {"check": {"prompts": 12}}
    for arm in ("lora", "reft", "rmu"):
        cfg["arms"][arm]["train"].update(max_steps=6, eval_every=3)
    cfg["layers"]["selection"].update(resamples=2, max_texts=40, causal_prompts=6)
    cfg["layers"]["activations"] = {"max_texts": 80}
    cfg["sae"] = {"train_tokens": 20000, "quality_texts": 8}
    cfg["gate"] = {"sweep_alphas": [0.0, 1.0], "sweep_prompts": 6}
    # every attack on one trained arm (base and the oracle come with it), at the smallest strengths
    cfg["robustness"] = {"arms": ["lora"], "seeds": [0], "prompts": 6, "relearn": {"steps": [0, 2], "texts": 8},
                         "incontext": {"shots": [0, 2]}, "probe": {"texts": 8}}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def smk(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--configfile",
                       str(workdir / "config.yaml"), "--cores", "2", *args]
    env = {**os.environ, **SENTINEL_ENV}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return res


@pytest.fixture(scope="session")
def gemini_server():
    """A loopback Gemini endpoint for the whole session (the reduced run's judge talks to it; reruns
    of its jobs in later tests do too). Its first answer is an error that echoes the API key, as a
    careless server might: the key must still never reach an output or a log."""
    from fake_gemini import Gemini

    server = Gemini()
    server.script.append(("status", (400, None, f"API key not valid: {SENTINEL}")))
    yield server
    server.close()


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, gemini_server):
    """The reduced demo with the LLM judge on (against the loopback server), run once per session from
    a path with a space and an apostrophe, with a sentinel API key in the environment (it must never
    reach an output)."""
    workdir = tmp_path_factory.mktemp("wf") / "my run's dir"
    workdir.mkdir()
    path = reduced_config(workdir)
    cfg = yaml.safe_load(path.read_text())
    cfg["judge"] = {"enabled": True, "base_url": gemini_server.url, "rpm": 6000, "timeout_s": 10.0,
                    "initial_delay_s": 0.05, "max_delay_s": 0.2, "max_total_s": 20.0}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    smk(workdir)
    return workdir


def planned_jobs(res: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from the "Job stats" table of a dry run."""
    lines = (res.stdout + res.stderr).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    jobs = {}
    for line in lines[start + 3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


@contextlib.contextmanager
def oom_above(model, limit: int, *, grad_only: bool = False):
    """Injected out-of-memory errors (tests of the memory back-off): the model raises CUDA's
    out-of-memory error for batches larger than ``limit`` (``grad_only``: only in grad-enabled
    passes, i.e. a training step's)."""
    import torch

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if (torch.is_grad_enabled() or not grad_only) and ids is not None and ids.shape[0] > limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected: batch {ids.shape[0]} > {limit})")

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def planted_cache(d: int, rates: dict[str, dict[int, float]], layer: int, n: int = 4000):
    """An identity SAE (latent i fires when coordinate i > 0.5) and an activation cache of ``n`` tokens
    per role in which latent i fires at ``rates[role][i]`` (Generator seed 0, roles in the given order)."""
    import json

    import torch
    from sae_lens import TopKSAE, TopKSAEConfig

    from mmie.sae.activations import Cache

    sae = TopKSAE(TopKSAEConfig(d_in=d, d_sae=d, k=d, dtype="float32", device="cpu"))
    sae.load_state_dict({"W_enc": torch.eye(d), "b_enc": torch.full((d,), -0.5), "W_dec": torch.eye(d),
                         "b_dec": torch.zeros(d)})
    g = torch.Generator().manual_seed(0)
    acts, doc = {}, {}
    for role, latents in rates.items():
        x = 0.05 * torch.randn(n, d, generator=g)
        for i, rate in latents.items():
            x[torch.rand(n, generator=g) < rate, i] = 2.0
        acts[role], doc[role] = x, torch.arange(n) // 20
    meta = {"layer": str(layer), "d_in": str(d), "model_fingerprint": "f", "roles": json.dumps(sorted(acts)),
            "extra": {}}
    return sae, Cache(acts=acts, doc=doc, meta=meta)


def tiny_train_files(tmp_path: Path, tiny_lm, texts: dict, parts: dict[str, slice]) -> Path:
    """The tiny model saved to ``tmp_path/model`` and forget (Hindi) / retain (English) split files under
    ``tmp_path/data/<role>/<part>.jsonl``: ``parts`` maps each part to the slice of the demo texts it gets."""
    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    data = tmp_path / "data"
    for role, lang in (("forget", "hi"), ("retain", "en")):
        for part, rows in parts.items():
            write_lines(data / role / f"{part}.jsonl",
                        [{"id": f"x{i}", "text": t} for i, t in enumerate(texts[lang][rows])])
    return data

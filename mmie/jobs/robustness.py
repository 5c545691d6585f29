"""Job functions of rules/robustness.smk: every attack of one (arm, seed) in one job
(``mmie.attacks``), and the study's robustness table. An attack job loads the model and the arm once,
as the arm's evaluation does (``mmie.jobs.evaluate.load_arm``), then runs each attack it is asked
for; each measures the forget test prompts (and, where the attack can change fluency, the retain
ones) at every strength and writes ``<arm>/seed<k>/robustness/<attack>.json``: per-item points
(``mmie.attacks.point``) for the crossed bootstrap, a few sample outputs per strength, the attack's
details and provenance. Every attack starts from the random state the arm's loading left (as if it
ran alone), and a failed attack costs only its own output (``mmie.failures.PartialFailure``)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmie import io, provenance
from mmie.failures import PartialFailure, is_memory_error
from mmie.jobs import JobConfig, job, splits_by_role

if TYPE_CHECKING:
    from mmie.arms import Arm
    from mmie.model.loading import LoadedModel

log = logging.getLogger(__name__)

#: the config sections every attack job reads: the arm's model and build (as evaluate), generation and
#: its measurement (LID), and the attack settings
SECTIONS = ("model", "generation", "eval", "gate", "deterministic", "languages", "lid", "robustness")
SAMPLES = 3     # sample outputs kept per strength (the report's examples)


class Measure:
    """Generates for the first ``robustness.prompts`` items of an evaluation set and scores each output
    as the score job does (LID label -> target 0/1, extraction strength), with no file in between."""

    def __init__(self, config, lid, set_file: str, tok, seed: int, system: str | None) -> None:
        from mmie.model.generation import Decoding

        self.items = io.read_jsonl(set_file)[:config["robustness"]["prompts"]]
        if not self.items:
            raise ValueError(f"{set_file} has no items; rerun prepare_data")
        self.lid, self.tok, self.seed, self.system = lid, tok, seed, system
        self.decoding = Decoding.from_config(config["generation"])
        self.extraction = dict(config["lid"]["extraction"] or {})

    def __call__(self, model, desc: str, items: list[dict] | None = None, decoding=None) -> dict:
        from mmie.model.generation import generate
        from mmie.stats.text import extraction_strength

        gens = generate(model, self.tok, items or self.items, decoding or self.decoding, system=self.system,
                        seed=self.seed, desc=desc)
        truncated = sum(bool(g["prompt_truncated"]) for g in gens)   # as the evaluation: counted, beside each point
        outs = [g["output"] for g in gens]
        labels = [self.lid.identify(o)[0] for o in outs]
        return {"ids": [g["id"] for g in gens], "outputs": outs, "labels": labels, "truncated": truncated,
                "target": [int(self.lid.is_target(lab)) for lab in labels],
                "es": [extraction_strength(o, self.lid.identify, self.lid.is_target, **self.extraction) for o in outs]}


def forget_points(strength, measured: dict, set_name: str = "forget") -> list[dict]:
    from mmie.attacks import point

    extra = {"prompts_truncated": measured["truncated"]}
    return [point(strength, set_name, "target_rate", measured["ids"], measured["target"], **extra),
            point(strength, set_name, "es", measured["ids"], measured["es"], **extra)]


def sample(strength, measured: dict, set_name: str = "forget") -> list[dict]:
    return [{"strength": strength, "set": set_name, "id": i, "output": o, "label": lab}
            for i, o, lab in list(zip(measured["ids"], measured["outputs"], measured["labels"], strict=True))[:SAMPLES]]


def _setup(config, arm_name: str, seed: int, model_dir, checkpoint, assets, method_files, detector: str | None):
    """The model, the arm, its layer assets and (given the detector) the LID, seeded."""
    from mmie.jobs.evaluate import load_arm
    from mmie.lang.lid import load_lid
    from mmie.seeding import seed_everything

    seed_everything(seed, config["deterministic"])
    lm, arm, layer_assets = load_arm(config, arm_name, seed, model_dir, checkpoint, assets, method_files)
    lid = load_lid(config["lid"], config["languages"], detector) if detector else None
    return lm, arm, layer_assets, lid


@dataclasses.dataclass
class Loaded:
    """One (arm, seed) as its attacks see it: loaded once per job (``_setup``)."""
    config: JobConfig
    arm_name: str
    seed: int
    lm: LoadedModel
    arm: Arm
    layer_assets: Any
    lid: Any
    model_dir: str | None
    checkpoint: str | None
    method_files: list

    def write(self, out: str, attack: str, points: list[dict], samples: list[dict], details: dict, t0: float,
              inputs: list[str]) -> None:
        io.write_json(out, {
            "attack": attack, "arm": self.arm_name, "seed": self.seed, "method": self.arm.method, "points": points,
            "samples": samples, "details": details, "seconds": round(time.time() - t0, 1),
            "provenance": provenance.build(self.config, seed=self.seed, runtime=self.lm.runtime, rule=self.config.rule,
                                           inputs=inputs)})


def _attack_job(config: JobConfig, arm_name: str, seed: int, model_dir: str | None, checkpoint: str | None, outs,
                *, forget_set: str, retain_set: str, splits, detector: str, workdir: str, assets=None,
                method_files=()) -> None:
    """Every attack of one (arm, seed) whose output is in ``outs`` (``<...>/robustness/<attack>.json``),
    in report order, on one load of the arm; ``splits`` the forget/holdout (relearn, incontext) and
    probe split files, ``workdir`` the quantize attack's scratch folder. An attack that fails is
    logged with its traceback and ends as a ``PartialFailure`` naming its output after the others ran
    (an out-of-memory error ends the job at once: Snakemake's retries give it more memory)."""
    from mmie.attacks import ATTACKS
    from mmie.seeding import random_state, restore_random_state

    wanted = {Path(o).stem: str(o) for o in outs}
    unknown = sorted(set(wanted) - set(ATTACKS))
    if unknown:
        raise ValueError(f"attack job {arm_name}/seed{seed}: outputs for unknown attacks {unknown} "
                         f"(known: {list(ATTACKS)}); rules/robustness.smk is miswired")
    lm, arm, layer_assets, lid = _setup(config, arm_name, seed, model_dir, checkpoint, assets, method_files, detector)
    ctx = Loaded(config, arm_name, seed, lm, arm, layer_assets, lid, model_dir, checkpoint,
                 list(method_files))
    state = random_state()   # what each attack would start from in a job of its own
    failed: dict[str, str] = {}
    for name in (a for a in ATTACKS if a in wanted):
        restore_random_state(state)
        t0 = time.time()
        try:
            if name == "relearn":
                relearn(ctx, forget_set, splits, wanted[name])
            elif name == "incontext":
                incontext(ctx, forget_set, splits, wanted[name])
            elif name == "quantize":
                quantize(ctx, forget_set, retain_set, wanted[name], workdir)
            else:
                probe(ctx, splits, wanted[name])
        except Exception as err:  # recorded below (PartialFailure): the failed attack's output becomes a stub
            if is_memory_error(err):
                raise
            log.exception("attack %s on %s/seed%d failed", name, arm_name, seed)
            failed[wanted[name]] = f"{name}: {type(err).__name__}: {err}"
        else:
            log.info("attack %s on %s/seed%d: %.1f s", name, arm_name, seed, time.time() - t0)
    if failed:
        raise PartialFailure(failed)


#: the attack job: every attack of an (arm, seed) at the robustness seeds every attack runs at
attack = job(*SECTIONS, arm=True, rule="attack")(_attack_job)
#: the same job where only the seeded attacks run (later seeds of a deterministic arm: ``attack_seeds``)
attack_seeded = job(*SECTIONS, arm=True, rule="attack_seeded")(_attack_job)


def relearn(ctx: Loaded, forget_set: str, splits, out: str) -> None:
    """The relearning attack: a fresh LoRA on top of the arm, trained for k steps on forget/holdout
    texts (``robustness.relearn``), the forget test prompts measured at each k."""
    from mmie.attacks.relearn import relearn as attack
    from mmie.jobs import read_declared_split

    t0 = time.time()
    config, arm_name, seed, lm, arm, lid = ctx.config, ctx.arm_name, ctx.seed, ctx.lm, ctx.arm, ctx.lid
    cfg = config["robustness"]["relearn"]
    texts = read_declared_split(splits_by_role(splits), "forget", "holdout", "relearn")[:cfg["texts"]]
    measure = Measure(config, lid, forget_set, lm.tokenizer, seed, arm.system)
    curve, details = attack(arm, lm, texts, sorted(cfg["steps"]), lr=cfg["lr"], rank=cfg["rank"],
                            batch_size=cfg["batch_size"], max_length=cfg["max_length"], seed=seed,
                            measure=lambda model: measure(model, f"relearn {arm_name}/seed{seed}"))
    points = [p for k, m in curve for p in forget_points(k, m)]
    samples = [s for k, m in curve for s in sample(k, m)]
    ctx.write(out, "relearn", points, samples, {**details, "texts": len(texts), "split": "forget/holdout"}, t0,
              [forget_set, *_holdout(splits)])


def incontext(ctx: Loaded, forget_set: str, splits, out: str) -> None:
    """In-context relearning: n forget/holdout sentences before each forget test prompt."""
    from mmie.attacks.incontext import with_examples
    from mmie.jobs import read_declared_split

    t0 = time.time()
    config, arm_name, seed, lm, arm, lid = ctx.config, ctx.arm_name, ctx.seed, ctx.lm, ctx.arm, ctx.lid
    examples = read_declared_split(splits_by_role(splits), "forget", "holdout", "incontext")
    measure = Measure(config, lid, forget_set, lm.tokenizer, seed, arm.system)
    shots = sorted(config["robustness"]["incontext"]["shots"])
    prompted = {n: with_examples(measure.items, examples, n, seed=seed) for n in shots}
    # the examples come on top of the prompt: the prompt budget grows so that no prompt loses its end
    longest = max(len(lm.tokenizer(it["prompt"], add_special_tokens=False)["input_ids"])
                  for items in prompted.values() for it in items)
    decoding = dataclasses.replace(measure.decoding, max_prompt_tokens=max(measure.decoding.max_prompt_tokens, longest))
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    if limit and longest + decoding.max_new_tokens > limit:
        raise ValueError(f"incontext: {max(shots)} examples make prompts of up to {longest} tokens; with "
                         f"generation.max_new_tokens {decoding.max_new_tokens} that exceeds the model's "
                         f"{limit} positions: lower robustness.incontext.shots")
    points, samples = [], []
    with arm.active():
        for n in shots:
            m = measure(arm.model, f"incontext {arm_name}/seed{seed} n={n}", prompted[n], decoding)
            points += forget_points(n, m)
            samples += sample(n, m)
    ctx.write(out, "incontext", points, samples,
              {"examples": len(examples), "split": "forget/holdout", "max_prompt_tokens": decoding.max_prompt_tokens,
               "prompt_tokens": "raised to the longest prompt with its examples (no prompt is truncated)"},
              t0, [forget_set, *_holdout(splits)])


def quantize(ctx: Loaded, forget_set: str, retain_set: str, out: str, workdir: str) -> None:
    """The quantization attack: the arm merged into its model where it can be, reloaded at each of
    ``robustness.quantize.bits``; forget prompts (target rate, ES) and retain texts (perplexity)
    measured at full precision and at each precision."""
    import shutil

    from mmie.attacks import point
    from mmie.attacks.quantize import quantized_arm
    from mmie.model.likelihood import reference_nll

    t0 = time.time()
    # bitsandbytes' 8-bit CPU matmul logs, on every layer call, that it casts float32 inputs to float16: once is enough
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_Once("cast from"))
    config, arm_name, seed, lm, arm, lid = ctx.config, ctx.arm_name, ctx.seed, ctx.lm, ctx.arm, ctx.lid
    measure = Measure(config, lid, forget_set, lm.tokenizer, seed, arm.system)
    retain = [it for it in io.read_jsonl(retain_set) if it.get("text")][:config["robustness"]["prompts"]]
    if not retain:
        raise ValueError(f"{retain_set} has no item with a reference text; the quantization attack measures retain "
                         f"perplexity on them")
    points, samples, details = [], [], {}

    def run(strength, arm_now) -> None:
        with arm_now.active():
            m = measure(arm_now.model, f"quantize {arm_name}/seed{seed} {strength}")
            nll = reference_nll(arm_now, lm.tokenizer, [it["text"] for it in retain], desc="retain ppl",
                                batch_size=config["eval"]["score_batch_size"], max_length=config["eval"]["max_length"])
        points.extend(forget_points(strength, m))
        points.append(point(strength, "retain", "ppl", [it["id"] for it in retain], [s["nll"] for s in nll],
                            [s["tokens"] for s in nll], transform="exp"))
        samples.extend(sample(strength, m))

    run("full", arm)
    spec = config["arms"][arm_name]
    for bits in config["robustness"]["quantize"]["bits"]:
        q, _ = quantized_arm(arm_name, spec, config["model"], ctx.model_dir, ctx.checkpoint, bits=bits, config=config,
                             seed=seed, assets=ctx.layer_assets, files=ctx.method_files, workdir=workdir)
        details[str(bits)] = q.details["quantization"]
        run(bits, q)
        del q
    if Path(workdir).exists():
        shutil.rmtree(workdir)      # the merged copies: large, and rebuilt from the checkpoint on a rerun
    ctx.write(out, "quantize", points, samples, details, t0, [forget_set, retain_set])


class _Once(logging.Filter):
    """Lets the first record containing ``text`` through, and drops the repeats."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.text not in record.getMessage():
            return True
        if self.seen:
            return False
        self.seen = True
        return True


def probe(ctx: Loaded, splits, out: str) -> None:
    """The probing attack: per layer, a logistic-regression probe on mean-pooled hidden states (arm
    on) tells the target language — in its script and romanized — from the retain language and the
    neighbours; fitted on train texts, its C chosen on dev texts, scored on test texts. The native
    script alone gives the target away to any model (the oracle's probe reads it too); romanized
    target text shares the retain language's script, so recognising it as the target takes knowing
    the language: ``romanized_recall`` is the measure that tells an arm from the oracle."""
    import numpy as np

    from mmie.attacks import point
    from mmie.attacks.probe import fit_probe, hidden_means

    t0 = time.time()
    config, seed, lm, arm = ctx.config, ctx.seed, ctx.lm, ctx.arm
    cfg, ev = config["robustness"]["probe"], config["eval"]
    files = splits_by_role(splits)
    lang = config["languages"]
    target = lang["target"]["code"]
    roles = {"forget": target, "forget_romanized": target, "retain": lang["retain"]["code"],
             **{f"neighbour_{c}": c for c in lang.get("neighbours", {})}}
    data = {}
    with arm.active():
        for part in ("train", "dev", "test"):
            rows = [(r, role) for role in roles for r in _rows(files, role, part)[:cfg["texts"]]]
            feats = hidden_means(arm.model, lm.tokenizer, [r["text"] for r, _ in rows],
                                 batch_size=ev["score_batch_size"], max_length=ev["max_length"])
            data[part] = (feats, np.array([roles[role] for _, role in rows]), [r["id"] for r, _ in rows],
                          [role for _, role in rows])
    points, per_layer = [], []
    for layer in range(data["train"][0].shape[0]):
        fit = fit_probe(*((data[p][0][layer], data[p][1]) for p in ("train", "dev", "test")), Cs=cfg["Cs"], seed=seed)
        ids, test_roles = data["test"][2], data["test"][3]
        points.append(point(layer, "probe", "accuracy", ids, fit["test_correct"]))
        for metric, role in (("target_recall", "forget"), ("romanized_recall", "forget_romanized")):
            where = [i for i, r in enumerate(test_roles) if r == role]
            points.append(point(layer, "probe", metric, [ids[i] for i in where], [fit["test_correct"][i] for i in where]))
        per_layer.append({"layer": layer, **{k: fit[k] for k in ("C", "dev_accuracy", "test_accuracy",
                                                                   "per_class_recall", "converged")}})
    counts = {p: {role: data[p][3].count(role) for role in roles} for p in data}
    ctx.write(out, "probe", points, [],
           {"layers": per_layer, "classes": sorted(set(roles.values())), "roles": roles, "texts": counts,
            "features": "hidden states after each block, mean-pooled over the text's tokens (the tokenizer's prefix "
                        "left out), the arm on (an instruction arm's instruction is not part of the text)"},
           t0, _probe_splits(config, splits))


def _holdout(splits) -> list[str]:
    """The forget/holdout split among a job's split files: what relearn and incontext read."""
    return [str(p) for (role, part), p in splits_by_role(splits).items() if (role, part) == ("forget", "holdout")]


def _probe_splits(config, splits) -> list[str]:
    """The split files the probe reads: train, dev and test of the target (script and romanized), the
    retain language and each neighbour (the rule's ``splits`` also hold forget/holdout)."""
    roles = {"forget", "forget_romanized", "retain", *(f"neighbour_{c}" for c in config["languages"].get("neighbours", {}))}
    return [str(p) for (role, part), p in splits_by_role(splits).items() if role in roles and part in ("train", "dev", "test")]


def _rows(files, role: str, part: str) -> list[dict]:
    if (role, part) not in files:
        raise ValueError(f"the probe reads the {role}/{part} split, which the rule does not declare (rules/robustness.smk)")
    rows = io.read_jsonl(files[role, part])
    if not rows:
        raise ValueError(f"{files[role, part]} is empty; the probe needs {role}/{part} texts (rerun prepare_data)")
    return rows


@job("robustness", "stats", "arms", "languages.target")
def robustness(config: JobConfig, inputs: list[str], table_out: str, readings_out: str, figure_out: str) -> None:
    """The study's robustness table (``summary/robustness.csv``), one reading per arm and attack, and
    the figure (``mmie.report.robustness``); a failed attack job is left out and named in the log."""
    from mmie.config import oracle_arm
    from mmie.report import robustness as rob

    results = rob.load(inputs)
    st = config["stats"]
    base = next((a for a, spec in config["arms"].items() if spec["method"] == "base"), None)
    oracle = oracle_arm(config)
    df = rob.table(results, n_boot=st["n_boot"], rng_seed=st["rng_seed"], level=st["level"], base=base, oracle=oracle)
    read = rob.readings(df, base=base, oracle=oracle, fraction=config["robustness"]["recover_fraction"])
    io.write_text(table_out, df.to_csv(index=False))
    io.write_text(readings_out, read.to_csv(index=False))
    fig = rob.figure(df, base=base, oracle=oracle, target=config["languages"]["target"]["code"], level=st["level"])
    io.save_figure(figure_out, fig)
    import matplotlib.pyplot as plt

    plt.close(fig)
    log.info("robustness: %d points of %d attack results", len(df), len(results))

"""Job functions of rules/model.smk: build_demo_model, build_oracle_model, convert_gemma.
Rule scripts (scripts/*.py) only unpack ``snakemake`` and call these."""

from __future__ import annotations

import logging
import math

from mmie import io, provenance
from mmie.errors import ModelError
from mmie.jobs import JobConfig, job, read_declared_split, splits_by_role

log = logging.getLogger(__name__)


@job("demo_model", "generation", "deterministic", "model", "languages", "lid", "eval.prompt_fraction")
def build_demo_model(cfg: JobConfig, splits, lid_detector: str, out_dir: str, report_out: str) -> None:
    """The demo model, trained from scratch on the train parts of ``splits`` (the rule's split files)
    and checked on their forget and retain dev parts."""
    from mmie.data.corpus import split_dir
    from mmie.lang.translit import romanize
    from mmie.model import demo as demo_model

    config, cfg = cfg, cfg["demo_model"]
    files = splits_by_role(splits)

    def texts_of(role: str, part: str) -> list[str]:
        return read_declared_split(files, role, part, "build_demo_model")

    # trained on train splits; early stopping, the reload check and the generation check use dev
    used = {f"{split_dir(role)}/train": texts_of(role, "train")
            for role in ("forget", "retain", *(f"neighbour_{c}" for c in config["languages"].get("neighbours", {})))}
    train_texts = [t for texts in used.values() for t in texts]
    if cfg["include_romanized"]:
        script = config["languages"]["target"]["script"]
        train_texts += [romanize(t, config["lid"]["romanization"], script) for t in used["forget/train"]]
    target, retain = config["languages"]["target"]["code"], config["languages"]["retain"]["code"]
    heldout = {target: texts_of("forget", "dev"), retain: texts_of("retain", "dev")}
    used.update({"forget/dev": heldout[target], "retain/dev": heldout[retain]})
    # written to a temporary folder and renamed when trained and checked (a killed or failed job
    # leaves no half-written model folder)
    with io.atomic_dir(out_dir) as tmp:
        info = demo_model.train(cfg, train_texts, heldout, tmp)
        lm = reload_checked(config, tmp, out_dir, heldout, info, "demo model")
        lid = check_lid(config, lid_detector)
        check = {lang: continuations(config, lm, lid, files[role, "dev"], lang)
                 for lang, role in ((target, "forget"), (retain, "retain"))}
        ck = cfg["check"]
        problems = demo_model.check_generations(check, ck["min_language_rate"], ck["min_distinct2"], ck["max_repetitive_share"])
        report = {"training": info, "check": check, "problems": problems, "runtime": lm.runtime,
                  "provenance": provenance.build(config, seed=cfg["seed"],
                                                 runtime=lm.runtime, rule="build_demo_model", texts=used)}
        io.write_json(tmp / "mmie_model.json", report)
        io.write_json(report_out, report)
        if problems and cfg["check"]["enabled"]:
            raise ModelError("the demo model did not learn the languages well enough: " + "; ".join(problems)
                             + f". Details in {report_out}. Train longer (demo_model.max_steps), change demo_model.lr, "
                               "or add data.")


#: split roles the oracle may never train on: the target language, in its own script or romanized
TARGET_ROLES = ("forget", "forget_romanized")


def oracle_training_texts(config: JobConfig, files: dict[tuple[str, str], str]) -> dict[str, list[str]]:
    """What the oracle trains on, by group: the train splits of the retain language and of every
    neighbour, and nothing else (no forget text, and no romanized forget text, which the base model adds
    under ``demo_model.include_romanized``)."""
    from mmie.data.corpus import split_dir

    roles = ("retain", *(f"neighbour_{c}" for c in config["languages"].get("neighbours", {})))
    return {f"{split_dir(role)}/train": read_declared_split(files, role, "train", "build_oracle_model") for role in roles}


@job("demo_model", "generation", "deterministic", "model", "languages", "lid", "eval.prompt_fraction")
def build_oracle_model(cfg: JobConfig, splits, target_prompts: str, base_model: str, lid_detector: str, out_dir: str,
                       report_out: str) -> None:
    """The oracle arm's model (docs/method.md §6): the demo model's recipe (``demo_model``: architecture,
    schedule, step budget, early stopping, seed) and the base model's own tokenizer (read from
    ``base_model``, not retrained: same token ids and vocabulary, so likelihoods compare), trained on
    the rule's ``splits`` with no target-language text at all. ``splits``: the retain and neighbour
    train and dev parts; a target split among them is refused. Early stopping watches the mean held-out
    loss of every language the oracle learns (retain and each neighbour), as the base model's watches
    the languages it learns (target and retain): on retain alone it stopped at half the base's steps
    with the neighbours undertrained (demo: Punjabi and Bengali perplexity 1.4x base's).
    ``target_prompts`` (the forget dev file) is read only after training, for the share of target
    prompts the oracle continues in the target language: reported, expected near 0, not checked.
    English continuations are checked like the base model's (``demo_model.check``)."""
    from mmie.data.corpus import split_dir
    from mmie.model import demo as demo_model

    config, cfg = cfg, cfg["demo_model"]
    files = splits_by_role(splits)
    leaked = sorted("/".join(k) for k in files if k[0] in TARGET_ROLES)
    if leaked:
        raise ValueError(f"build_oracle_model was given target-language splits {leaked}: the oracle never sees the "
                         f"target language; the rule's splits input is miswired (rules/model.smk)")
    used = oracle_training_texts(config, files)
    train_texts = [t for texts in used.values() for t in texts]
    retain = config["languages"]["retain"]["code"]
    target = config["languages"]["target"]["code"]
    learned = {retain: "retain", **{c: f"neighbour_{c}" for c in config["languages"].get("neighbours", {})}}
    heldout = {code: read_declared_split(files, role, "dev", "build_oracle_model") for code, role in learned.items()}
    used.update({f"{split_dir(role)}/dev": heldout[code] for code, role in learned.items()})
    tokenizer = demo_model.load_tokenizer(base_model)
    with io.atomic_dir(out_dir) as tmp:
        info = demo_model.train(cfg, train_texts, heldout, tmp, tokenizer=tokenizer)
        differs = tokenizer_differences(base_model, tmp)
        if differs:
            raise ModelError(f"the oracle's saved tokenizer differs from the base model's ({base_model}): {differs}")
        lm = reload_checked(config, tmp, out_dir, heldout, info, "oracle model")
        lid = check_lid(config, lid_detector)
        check = {retain: continuations(config, lm, lid, files["retain", "dev"], retain)}
        ck = cfg["check"]
        problems = demo_model.check_generations(check, ck["min_language_rate"], ck["min_distinct2"], ck["max_repetitive_share"])
        # reported, not checked: how often the oracle continues a target-language prompt in that language
        check[target] = {**continuations(config, lm, lid, target_prompts, target), "reported_only": True,
                         "prompts_from": "forget/dev (prompts only, after training)"}
        report = {"training": info, "training_texts": sorted(used), "tokenizer": {"from": str(base_model), "identical": True},
                  "check": check, "target_continuation_rate": check[target]["target_rate"],
                  "target_script_rate": check[target]["script_rate"], "problems": problems, "runtime": lm.runtime,
                  "provenance": provenance.build(config, seed=cfg["seed"], runtime=lm.runtime,
                                                 rule="build_oracle_model", texts=used)}
        io.write_json(tmp / "mmie_model.json", report)
        io.write_json(report_out, report)
        if problems and cfg["check"]["enabled"]:
            raise ModelError("the oracle model did not learn the retained language well enough: " + "; ".join(problems)
                             + f". Details in {report_out}. It has the base model's recipe (demo_model); change it there.")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tokenizer_differences(base_dir, other_dir) -> list[str]:
    """The tokenizer files of ``other_dir`` whose bytes differ from ``base_dir``'s (or that only one has)."""
    from pathlib import Path

    out = []
    for name in TOKENIZER_FILES:
        a, b = Path(base_dir) / name, Path(other_dir) / name
        if a.is_file() != b.is_file() or (a.is_file() and a.read_bytes() != b.read_bytes()):
            out.append(name)
    return out


def check_lid(config: JobConfig, detector: str):
    """The LID of the demo and oracle models' language check. The check asks which language a model
    writes (fluency is checked by distinct-2 and the repetition share), so the LID runs without its
    noise rules, which call a tiny model's degraded but recognisable Hindi or English noise (demo:
    25-30 % of the check outputs)."""
    from mmie.lang.lid import load_lid

    lid_cfg = {**config["lid"], "noise": {**config["lid"]["noise"], "enabled": False}}
    return load_lid(lid_cfg, config["languages"], detector)


def reload_checked(config: JobConfig, folder, out_dir: str, heldout: dict[str, list[str]], info: dict, what: str):
    """The saved ``folder`` loaded through the loader every arm uses (seeded for the checks that follow);
    it must reproduce the training run's held-out perplexity (tokenizer and weights round-trip): a drift
    means the saved model is not the model that was trained."""
    from mmie.model import demo as demo_model
    from mmie.model.loading import load_model
    from mmie.seeding import seed_everything

    cfg = config["demo_model"]
    seed_everything(cfg["seed"])
    lm = load_model({**config["model"], "source": "demo"}, str(folder))
    lm.runtime["model"] = str(out_dir)   # the folder it becomes, not the temporary name
    for lang, texts in heldout.items():
        seqs = [lm.tokenizer(t, add_special_tokens=False)["input_ids"][:cfg["max_position"] - 1]
                + [lm.tokenizer.eos_token_id] for t in texts]
        reloaded = math.exp(demo_model.heldout_loss(lm.model, seqs, lm.tokenizer.pad_token_id))
        trained = info["best_heldout"][f"heldout_ppl_{lang}"]
        if abs(reloaded - trained) > 0.01 * trained:
            raise ModelError(f"the saved {what} does not reproduce its training: held-out {lang} perplexity "
                             f"{reloaded:.2f} after reload vs {trained:.2f} in training ({out_dir})")
    return lm


def continuations(config: JobConfig, lm, lid, dev_file: str, lang: str) -> dict:
    """How the model continues prompts cut from the first ``demo_model.check.prompts`` texts of a dev
    split file (the evaluation sets come from test): the share the LID calls ``lang`` (``rate``), the
    share written mainly in the language's script (``script_rate``), the share the LID calls the target
    language in either script (``target_rate``: romanized included), diversity, repetition, five examples."""
    from mmie.data.corpus import prompt_prefix
    from mmie.lang.lid import language_scripts
    from mmie.lang.scripts import dominant_script
    from mmie.model.generation import Decoding, generate
    from mmie.stats.text import distinct_n, is_repetitive, mean_distinct_n

    items = [{"id": r["id"], "prompt": prompt_prefix(r["text"], config["eval"]["prompt_fraction"])}
             for r in io.read_jsonl(dev_file)[:config["demo_model"]["check"]["prompts"]]]
    gens = generate(lm.model, lm.tokenizer, items, Decoding.from_config(config["generation"]), desc=f"check {lang}")
    outs = [g["output"] for g in gens]
    labels = [lid.identify(o)[0] for o in outs]
    script = language_scripts(config["languages"])[lang]
    return {"prompts": len(items), "rate": sum(lab == lang for lab in labels) / len(labels),
            "script_rate": sum(dominant_script(o)[0] == script for o in outs) / len(outs),
            "target_rate": sum(map(lid.is_target, labels)) / len(labels),
            "labels": {lab: labels.count(lab) for lab in sorted(set(labels))},
            "distinct2": mean_distinct_n(outs, 2),
            "corpus_distinct2": distinct_n(outs, 2),
            "repetitive_share": sum(map(is_repetitive, outs)) / len(outs),
            "examples": [{"prompt": g["prompt"], "output": g["output"]} for g in gens[:5]]}


@job("model")
def convert_gemma(cfg: JobConfig, out_dir: str, report_out: str) -> None:
    """Gemma-3-270M from its PyPI package to an HF folder, once per experiment (optional extra)."""
    from mmie.model.gemma import convert

    with io.atomic_dir(out_dir) as tmp:
        info = convert(tmp)
    io.write_json(report_out, {"conversion": info, "provenance": provenance.build(
        cfg, rule="convert_gemma")})

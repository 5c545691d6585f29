"""Job functions of rules/model.smk: build_demo_model, convert_gemma.
Rule scripts (scripts/*.py) only unpack ``snakemake`` and call these."""

from __future__ import annotations

import logging
import math

from mmie import io, provenance
from mmie.errors import ModelError
from mmie.jobs import JobConfig, job, split_files, split_texts

log = logging.getLogger(__name__)


@job("demo_model", "generation", "deterministic", "model", "languages", "lid", "eval.prompt_fraction")
def build_demo_model(cfg: JobConfig, splits, lid_detector: str, out_dir: str, report_out: str) -> None:
    """The demo model, trained from scratch on the train parts of ``splits`` (the rule's split files)
    and checked on their forget and retain dev parts."""
    from mmie.data.corpus import prompt_prefix, split_dir
    from mmie.lang.lid import load_lid
    from mmie.lang.translit import romanize
    from mmie.model import demo as demo_model
    from mmie.model.generation import Decoding, generate
    from mmie.model.loading import load_model
    from mmie.seeding import seed_everything
    from mmie.stats.text import distinct_n, is_repetitive, mean_distinct_n

    config, cfg = cfg, cfg["demo_model"]
    files = split_files(splits)

    def texts_of(role: str, part: str) -> list[str]:
        return split_texts(files, role, part, "build_demo_model")

    # trained on train splits; early stopping, the reload check and the generation check use dev
    used = {f"{split_dir(role)}/train": texts_of(role, "train")
            for role in ("forget", "retain", *(f"neighbour_{c}" for c in config["languages"].get("neighbours", {})))}
    train_texts = [t for texts in used.values() for t in texts]
    if cfg["include_romanized"]:
        train_texts += [romanize(t, config["lid"]["romanization"]) for t in used["forget/train"]]
    target, retain = config["languages"]["target"]["code"], config["languages"]["retain"]["code"]
    heldout = {target: texts_of("forget", "dev"), retain: texts_of("retain", "dev")}
    used.update({"forget/dev": heldout[target], "retain/dev": heldout[retain]})
    # written to a temporary folder and renamed when trained and checked (a killed or failed job
    # leaves no half-written model folder)
    with io.atomic_dir(out_dir) as tmp:
        info = demo_model.train(cfg, train_texts, heldout, tmp)

        # The sanity check loads the saved folder through the same loader every arm uses.
        seed_everything(cfg["seed"])
        lm = load_model({**config["model"], "source": "demo"}, str(tmp))
        lm.runtime["model"] = str(out_dir)   # the folder it becomes, not the temporary name
        # The reloaded folder must reproduce the training run's held-out perplexity (tokenizer and
        # weights round-trip); a drift means the saved model is not the model that was trained.
        for lang, texts in heldout.items():
            seqs = [lm.tokenizer(t, add_special_tokens=False)["input_ids"][:cfg["max_position"] - 1]
                    + [lm.tokenizer.eos_token_id] for t in texts]
            reloaded = math.exp(demo_model.heldout_loss(lm.model, seqs, lm.tokenizer.pad_token_id))
            trained = info["best_heldout"][f"heldout_ppl_{lang}"]
            if abs(reloaded - trained) > 0.01 * trained:
                raise ModelError(f"the saved demo model does not reproduce its training: held-out {lang} perplexity "
                                 f"{reloaded:.2f} after reload vs {trained:.2f} in training ({out_dir})")
        # the check asks which language the model writes (fluency is checked by distinct-2 and the
        # repetition share): the LID without its noise rules, which call a tiny model's degraded but
        # recognisable Hindi or English noise (demo: 25-30 % of the check outputs)
        lid = load_lid({**config["lid"], "noise": {**config["lid"]["noise"], "enabled": False}}, config["languages"],
                       lid_detector)
        decoding = Decoding.from_config(config["generation"])
        check = {}
        for lang, role in ((target, "forget"), (retain, "retain")):
            # continuation prompts from the dev split (the evaluation sets come from test)
            items = [{"id": r["id"], "prompt": prompt_prefix(r["text"], config["eval"]["prompt_fraction"])}
                     for r in io.read_jsonl(files[role, "dev"])[:cfg["check"]["prompts"]]]
            gens = generate(lm.model, lm.tokenizer, items, decoding, desc=f"check {lang}")
            outs = [g["output"] for g in gens]
            labels = [lid.identify(o)[0] for o in outs]
            check[lang] = {"prompts": len(items), "rate": sum(lab == lang for lab in labels) / len(labels),
                           "distinct2": mean_distinct_n(outs, 2),
                           "corpus_distinct2": distinct_n(outs, 2),
                           "repetitive_share": sum(map(is_repetitive, outs)) / len(outs),
                           "examples": [{"prompt": g["prompt"], "output": g["output"]} for g in gens[:5]]}
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


@job("model")
def convert_gemma(cfg: JobConfig, out_dir: str, report_out: str) -> None:
    """Gemma-3-270M from its PyPI package to an HF folder, once per experiment (optional extra)."""
    from mmie.model.gemma import convert

    with io.atomic_dir(out_dir) as tmp:
        info = convert(tmp)
    io.write_json(report_out, {"conversion": info, "provenance": provenance.build(
        cfg, rule="convert_gemma")})

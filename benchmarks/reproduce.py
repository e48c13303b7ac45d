"""The quality experiments behind our published tables, as named suites of ``seqrec``
runs: run them (resumably, a few at a time) and report them (mean +- sd over seeds).

    python benchmarks/reproduce.py list
    python benchmarks/reproduce.py status dss              # each run: state, epochs, best valid so far
    python benchmarks/reproduce.py commands dss            # what `run` would execute
    python benchmarks/reproduce.py run dss --jobs 2 --threads 1 [--only beauty_dss_s1 ...]
    python benchmarks/reproduce.py run best --device cuda  # every run on the GPU
    python benchmarks/reproduce.py report dss [--root runs]
    python benchmarks/reproduce.py archive dss --root runs   # records -> benchmarks/results/

Every run is one ``seqrec train`` (or ``seqrec pretrain``) call writing into
``ROOT/<run name>/`` with its log beside it (``ROOT/<run name>.log``). ``run`` skips the
runs that finished (``result.json``; for pretraining, one line per epoch in
``pretrain.jsonl``), waits for those another process is training (``seqrec`` locks its
``--out`` folder), continues the killed ones with ``--resume`` (exact: see
``Trainer.resume``) and starts the rest, so a suite longer than one sitting is simply run
again. A run that needs another (fine-tuning after pretraining) waits for it, or for the
epoch of it whose snapshot it fine-tunes from.

``archive`` copies the records of the finished runs (``result.json``, which holds the
training history, or ``pretrain.jsonl``; never weights) into
``benchmarks/results/<run name>/``, the folder the repository keeps: ``report`` and
``status`` read it like a run root (``--root benchmarks/results``), so every figure we
quote stays checkable after the run folders are gone.

Data: ``$SEQREC_SHARED_DATA`` (else ``../shared/data``), as the other benchmarks. These
are long: one Beauty run is 10 minutes to several hours on a 2-core CPU (see the README's
reproduction section), most of it the softmax over every item (``run --device cuda``
runs a suite on a GPU); the test suite never runs them.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from common import REPO_ROOT, SHARED_DATA

import torch
from seqrec.cli import check_device
from seqrec.utils import read_json, read_jsonl, run_folder_in_use


def read_record(path: Path):
    """A run's record (result.json, or history.jsonl / pretrain.jsonl: a list), its
    checksums verified (seqrec.utils.ChecksumError names a changed file or line). Records
    archived before runs carried checksums read without one, silently: they are the
    archive this script reports, and one warning per file would bury the table."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(has no checksum|without a checksum)")
        return read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)

METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")


@dataclass(frozen=True)
class Run:
    name: str  # folder under the root; also the log's name
    group: str  # row of the report: runs of one group differ only in their seed
    args: tuple[str, ...]  # after `seqrec <command>`, without --out / --resume
    command: str = "train"  # or "pretrain"
    needs: str | None = None  # a run that must have finished first
    # With needs, a pretraining run: the epochs of it this run needs (the snapshot it
    # fine-tunes from, --keep-every), instead of its end.
    needs_epochs: int | None = None
    # OMP_NUM_THREADS of this run, over `run --threads`: for a run whose result depends on
    # it (summation order), which its row then names.
    threads: int | None = None

    def folder(self, root: Path) -> Path:
        return root / self.name

    def epochs_done(self, root: Path) -> int:
        """Pretraining epochs this (pretrain) run has logged."""
        log = self.folder(root) / "pretrain.jsonl"
        return sum(1 for line in log.open() if line.strip()) if log.exists() else 0

    def finished(self, root: Path) -> bool:
        if self.command == "train":
            return (self.folder(root) / "result.json").exists()
        return self.epochs_done(root) >= int(self.args[self.args.index("--epochs") + 1])

    def ready(self, root: Path, by_name: dict[str, "Run"]) -> bool:
        """Whether what this run needs is there."""
        if self.needs is None:
            return True
        needed = by_name[self.needs]
        return needed.finished(root) if self.needs_epochs is None else needed.epochs_done(root) >= self.needs_epochs

    def started(self, root: Path) -> bool:
        return (self.folder(root) / ("checkpoint.pt" if self.command == "train" else "pretrain.pt")).exists()

    def argv(self, root: Path, device: str | None = None) -> list[str]:
        """The seqrec arguments of this run; ``device`` (``--device`` of ``train`` and
        ``pretrain``, which a resumed run may change) places it on another device."""
        argv = [self.command, *self.args, "--out", str(self.folder(root)), "--no-progress"]
        if device is not None:
            argv += ["--device", device]
        return argv + ["--resume"] if self.started(root) else argv


def _data(name: str) -> str:
    return str(SHARED_DATA / name)


def _seeded(seed: int | None) -> tuple[str, tuple[str, ...]]:
    """Run-name suffix and arguments of a seed; None is the CLI's default seed (42),
    which adds neither."""
    return ("", ()) if seed is None else (f"_s{seed}", ("--seed", str(seed)))


# The settings every table of the S3-Rec family shares (the CLI's SASRec defaults).
SMALL = ("--hidden-size", "64", "--num-layers", "2", "--num-heads", "2", "--inner-size", "256",
         "--dropout", "0.5", "--attention-dropout", "0.5", "--lr", "1e-3", "--batch-size", "256")


def _sasrec() -> list[Run]:
    return [
        Run("beauty_bce", "Beauty SASRec BCE", ("--model", "sasrec", "--data", _data("Beauty"),
                                                "--epochs", "200", "--patience", "0")),
        Run("beauty_sasrec_ce", "Beauty SASRec CE", ("--model", "sasrec", "--loss", "ce", "--data", _data("Beauty"),
                                                     "--epochs", "200", "--patience", "10")),
        # The folder's name is historical: the run was extended to 400 epochs, patience 30.
        Run("lastfm_bce200", "LastFM SASRec BCE", ("--model", "sasrec", "--data", _data("LastFM"),
                                                   "--epochs", "400", "--patience", "30")),
    ]


def _sine() -> list[Run]:
    runs = []
    for ds in ("Beauty", "LastFM"):
        key, budget = ds.lower(), ("--data", _data(ds), "--epochs", "200", "--patience", "10")
        runs.append(Run(f"{key}_sine", f"{ds} SINE", ("--model", "sine", *budget)))
        if ds == "Beauty":
            runs.append(Run(f"{key}_sine_assigned", f"{ds} SINE --intent-attention assigned",
                            ("--model", "sine", "--intent-attention", "assigned", *budget)))
        runs.append(Run(f"{key}_sasrec_ce", f"{ds} SASRec CE", ("--model", "sasrec", "--loss", "ce", *budget)))
    return runs


PAPER = ("--hidden-size", "256", "--num-layers", "4", "--num-heads", "8", "--inner-size", "256",
         "--dropout", "0.5", "--attention-dropout", "0.3", "--lr", "1e-4", "--batch-size", "256")


def _difsr_paper() -> list[Run]:
    # RecBole's DIF-SR run evaluates every 2 epochs and stops after 10 evaluations
    # without improvement; so does this one. SASRec CE with the same settings (those of
    # the difsr-beauty preset, spelled out) is the paper-size baseline without side
    # information.
    data, budget = ("--data", _data("Beauty")), ("--epochs", "200", "--patience", "10", "--eval-every", "2")
    return [Run("beauty_difsr", "Beauty DIF-SR (difsr-beauty preset: paper settings)",
                ("--model", "difsr", *data, "--attributes", "attributes", "--preset", "difsr-beauty", *budget)),
            Run("beauty_sasrec_paper", "Beauty SASRec CE, DIF-SR paper settings",
                ("--model", "sasrec", "--loss", "ce", *PAPER, *data, *budget))]


def _difsr_ablation() -> list[Run]:
    """DIF-SR against SASRec CE at one shared (small) setting: fusion, attribute predictors."""
    runs = []
    # LastFM has 1,090 users: 5 batches an epoch, so 10 epochs of patience stop CE runs
    # after ~80 steps, far from converged; there the budget is the sasrec suite's.
    for ds, key, patience in (("Beauty", "beauty", "10"), ("LastFM", "lastfm_p30", "30")):
        budget = ("--data", _data(ds), "--epochs", "200" if ds == "Beauty" else "400", "--patience", patience)
        difsr = ("--model", "difsr", "--attributes", "attributes", *SMALL, "--loss", "ce", *budget)
        # The head-to-head rows (SASRec CE, DIF-SR gate) over three seeds: the CLI's
        # default seed (42) and two more.
        for seed in (None, 1, 2):
            suffix, seeded = _seeded(seed)
            runs.append(Run(f"{key}_sasrec_ce{suffix}", f"{ds} SASRec CE",
                            ("--model", "sasrec", "--loss", "ce", *budget, *seeded)))
            runs.append(Run(f"{key}_difsr64_gate{suffix}", f"{ds} DIF-SR gate", (*difsr, "--fusion", "gate", *seeded)))
        for fusion in ("sum", "concat"):
            runs.append(Run(f"{key}_difsr64_{fusion}", f"{ds} DIF-SR {fusion}", (*difsr, "--fusion", fusion)))
        runs.append(Run(f"{key}_difsr64_gate_nopred", f"{ds} DIF-SR gate, no attribute predictor",
                        (*difsr, "--fusion", "gate", "--no-attribute-predictor")))
    return runs


def _dss_pair(ds: str, name: str, ablation_name: str, args: tuple, note: str = "") -> list[Run]:
    """DSS (seq2item + seq2seq) and its seq2item-only ablation, both on ``args``."""
    return [Run(name, f"{ds} DSS (seq2item + seq2seq){note}", ("--model", "dss", *args)),
            Run(ablation_name, f"{ds} DSS seq2item only{note}", ("--model", "dss", "--preset", "seq2item-only", *args))]


def _dss() -> list[Run]:
    """DSS vs its seq2item-only ablation vs SASRec CE, three seeds each, same budget.

    The seeds are difsr-ablation's (the CLI's default, 42, then 1 and 2), so on Beauty,
    where the budget is the same too, the SASRec CE row is difsr-ablation's runs."""
    runs = []
    for ds, budget in (("LastFM", ("--epochs", "100", "--patience", "0")),
                       ("Beauty", ("--epochs", "200", "--patience", "10"))):
        key = ds.lower()
        sasrec = f"{key}_sasrec_ce" if ds == "Beauty" else f"{key}_sasce"
        for seed in (None, 1, 2):
            suffix, seeded = _seeded(seed)
            common = ("--data", _data(ds), *budget, *seeded)
            runs += _dss_pair(ds, f"{key}_dss{suffix}", f"{key}_dss0{suffix}", common)
            runs.append(Run(f"{sasrec}{suffix}", f"{ds} SASRec CE", ("--model", "sasrec", "--loss", "ce", *common)))
    return runs


def _dss_weight() -> list[Run]:
    """Sensitivity of DSS to its seq2seq weight, the ``dss`` suite's budgets (0.1, the
    default, and 0, seq2item only, are that suite's rows). LastFM: three seeds per
    weight. Beauty (about 45 min a run on one CPU core): the smaller weights, the default
    seed first, as seq2seq at 0.1 trails seq2item only there."""
    runs = []
    for ds, weights, seeds, budget in (
            ("LastFM", ("0.01", "0.03", "0.3", "1.0"), (None, 1, 2), ("--epochs", "100", "--patience", "0")),
            ("Beauty", ("0.01", "0.03"), (None,), ("--epochs", "200", "--patience", "10"))):
        for weight in weights:
            for seed in seeds:
                suffix, seeded = _seeded(seed)
                runs.append(Run(f"{ds.lower()}_dss_w{weight.replace('.', '')}{suffix}",
                                f"{ds} DSS, seq2seq weight {weight}",
                                ("--model", "dss", "--data", _data(ds), *budget, "--seq2seq-weight", weight, *seeded)))
    return runs


def _dss_beta() -> list[Run]:
    """The dss suite's DSS and seq2item-only rows with ``--beta noise`` (the notes' beta
    read as white noise, so the seq2seq term cannot match intentions by their learned
    betas; see DSS's open choice 4), same budgets and seeds; the learned-beta rows are
    the dss suite's."""
    runs = []
    for ds, budget, seeds in (("LastFM", ("--epochs", "100", "--patience", "0"), (None, 1, 2)),
                              ("Beauty", ("--epochs", "200", "--patience", "10"), (None, 1, 2))):
        key = ds.lower()
        for seed in seeds:
            suffix, seeded = _seeded(seed)
            common = ("--data", _data(ds), *budget, "--beta", "noise", *seeded)
            runs += _dss_pair(ds, f"{key}_dssn{suffix}", f"{key}_dssn0{suffix}", common, ", noise beta")
    return runs


def _dss_lambda() -> list[Run]:
    """DSS with every present intention pair in the seq2seq InfoNCE
    (``--confidence-lambda 1``, no top-lambda confidence cut; DSS's open choice 10), the
    dss suite's budgets, seeds and seq2seq weight (0.1): the rows with the cut (0.5, the
    default) and seq2item only are that suite's."""
    runs = []
    for ds, budget in (("LastFM", ("--epochs", "100", "--patience", "0")),
                       ("Beauty", ("--epochs", "200", "--patience", "10"))):
        for seed in (None, 1, 2):
            suffix, seeded = _seeded(seed)
            runs.append(Run(f"{ds.lower()}_dss_lambda1{suffix}", f"{ds} DSS, no confidence cut (lambda 1)",
                            ("--model", "dss", "--data", _data(ds), *budget, "--confidence-lambda", "1",
                             *seeded)))
    return runs


def _dss_temperature() -> list[Run]:
    """DSS with the seq2seq InfoNCE logits sharpened (temperature 0.5) or softened (2)
    on top of their 1/sqrt(D) scale (DSS's open choice 7; the default, 1, is the dss
    suite's row), LastFM at the dss suite's budget and seq2seq weight (0.1), the default
    seed: neither came above seq2item only with it, so no further seeds are defined."""
    budget = ("--epochs", "100", "--patience", "0")
    return [Run(f"lastfm_dss_t{temperature.replace('.', '')}", f"LastFM DSS, seq2seq temperature {temperature}",
                ("--model", "dss", "--data", _data("LastFM"), *budget, "--seq2seq-temperature", temperature))
            for temperature in ("0.5", "2")]


def _dss_sampled() -> list[Run]:
    """DSS and its seq2item-only ablation with a sampled seq2item: ``--loss sampled``
    (softmax over the target and 100 uniform negatives instead of all items), LastFM at
    the dss suite's budget, seq2seq weight (0.1) and seeds: does seq2seq help where the
    seq2item term differs? (We expected a weaker seq2item; on LastFM it came out
    stronger.) Beauty (about 25 min a run on one core): the default seed."""
    runs = []
    for ds, budget, seeds in (("LastFM", ("--epochs", "100", "--patience", "0"), (None, 1, 2)),
                              ("Beauty", ("--epochs", "200", "--patience", "10"), (None,))):
        key = ds.lower()
        common = ("--data", _data(ds), *budget, "--loss", "sampled")
        for seed in seeds:
            suffix, seeded = _seeded(seed)
            runs += _dss_pair(ds, f"{key}_dss_sampled{suffix}", f"{key}_dss0_sampled{suffix}",
                              (*common, *seeded), ", sampled seq2item")
    return runs


def _dss_long() -> list[Run]:
    """The dss suite's LastFM pair (DSS at seq2seq weight 0.1, seq2item only) with twice
    its budget, 200 epochs: at 100 most of its runs are best in their last epochs, so
    the comparison there could be one of speed rather than of accuracy. The dss suite's
    seeds."""
    common = ("--data", _data("LastFM"), "--epochs", "200", "--patience", "0")
    runs = []
    for seed in (None, 1, 2):
        suffix, seeded = _seeded(seed)
        runs += _dss_pair("LastFM", f"lastfm_dss_e200{suffix}", f"lastfm_dss0_e200{suffix}",
                          (*common, *seeded), ", 200 epochs")
    return runs


def _dss_pretrain() -> list[Run]:
    """DSS as a pretraining stage (the DSSRec reading, issue 29): ``seqrec pretrain
    --model dss`` (300 epochs, batch 256, lr 1e-3, sliding windows of step 0.5 x
    max_len, seq2item + seq2seq at weights 1 and 1, K = 4, top-lambda 0.5 by kthvalue;
    a snapshot every 50 epochs), then fine-tuning from it at the dss suite's budgets and
    seeds: DSS seq2item only (the fine-tuning DSSRec does), the same with the pretraining's
    1/sqrt(D) item-score scale folded into the loaded ``out_norm`` (``--init-fold-scale``:
    without it the fine-tune starts from logits sqrt(D) times sharper), joint DSS
    (seq2item + 0.1 seq2seq) and SASRec CE (single head, the pretrained encoder). One pretraining per
    dataset (the default seed; as s3rec-seeds, the seeds are the fine-tuning's: a
    Beauty pretraining took 47 min on one core, 9 s an epoch, beside another run). The
    dss suite's joint DSS and seq2item-only rows (no pretraining) are this suite's too,
    for the comparison."""
    runs = []
    for ds, budget in (("LastFM", ("--epochs", "100", "--patience", "0")),
                       ("Beauty", ("--epochs", "200", "--patience", "10"))):
        key = ds.lower()
        pre = f"{key}_dsspre"
        runs.append(Run(pre, f"{ds} DSS pretraining (DSSRec reading), 300 epochs",
                        ("--model", "dss", "--data", _data(ds), "--epochs", "300", "--keep-every", "50"),
                        command="pretrain"))
        init = ("--init", f"{{root}}/{pre}")
        for seed in (None, 1, 2):
            suffix, seeded = _seeded(seed)
            common = ("--data", _data(ds), *budget, *seeded)
            runs += _dss_pair(ds, f"{key}_dss{suffix}", f"{key}_dss0{suffix}", common)
            runs += [Run(f"{key}_dsspre_dss0{suffix}", f"{ds} DSS pretrained, fine-tuned seq2item only",
                         ("--model", "dss", "--preset", "seq2item-only", *common, *init), needs=pre),
                     Run(f"{key}_dsspre_dss0fold{suffix}",
                         f"{ds} DSS pretrained, fine-tuned seq2item only, the pretraining's scale folded",
                         ("--model", "dss", "--preset", "seq2item-only", *common, *init, "--init-fold-scale"),
                         needs=pre),
                     Run(f"{key}_dsspre_dss{suffix}", f"{ds} DSS pretrained, fine-tuned DSS (seq2item + seq2seq)",
                         ("--model", "dss", *common, *init), needs=pre),
                     Run(f"{key}_dsspre_sasce{suffix}", f"{ds} DSS pretrained, fine-tuned SASRec CE",
                         ("--model", "sasrec", "--loss", "ce", *common, *init), needs=pre)]
    return runs


def _compose() -> list[Run]:
    """First compositions of ``--model composed`` (issue 29): DIF-SR's decoupled fusion of
    the item attributes and DSS's K intentions on one encoder, trained by a sampled
    softmax (100 uniform negatives), on LastFM at dss-sampled's budget and seeds, whose
    seq2item-only row is the same model without the fusion."""
    runs = []
    for seed in (None, 1, 2):
        suffix, seeded = _seeded(seed)
        runs.append(Run(f"lastfm_composed_difsr_dss_sampled{suffix}",
                        "LastFM composed: DIF-SR fusion + DSS intentions, sampled softmax",
                        ("--model", "composed", "--side-information", "difsr", "--attributes", "attributes",
                         "--interests", "dss", "--loss", "sampled", "--num-negatives", "100",
                         "--data", _data("LastFM"), "--epochs", "100", "--patience", "0", *seeded)))
    return runs


# Issue 29's recipe (``seqrec pretrain --preset best``, then ``seqrec train --model composed
# --preset best --init``) and its ablation: each component removed (or, for the loss,
# replaced by the alternative validation rejected) in turn.
BEST_ABLATIONS = (
    ("nofusion", "without DIF-SR fusion", ("--side-information", "none")),
    ("nointentions", "without DSS intentions (one user vector)", ("--interests", "none")),
    ("neither", "without fusion and intentions (SASRec CE)", ("--side-information", "none", "--interests", "none")),
    ("sampled", "with a sampled softmax (100 negatives) instead of CE", ("--loss", "sampled", "--num-negatives", "100")),
)


def _best() -> list[Run]:
    """Issue 29's recipe on LastFM and Beauty, seeds 42, 1 and 2 (rows "LastFM best" and
    "Beauty best", runs ``{ds}_best_s3pre*``): the composed model of ``--preset best``
    fine-tuned from S3-Rec's 20-epoch pretraining (``s3rec-aap-input``'s run, what
    ``seqrec pretrain --preset best`` runs: its encoder loads completely, DIF-SR's
    attribute parts and DSS's head start at initialisation). Then its ablation, with the
    preset's own budget (at most 200 epochs, patience 30) everywhere, so a row differs from
    the recipe in the named component only: without the pretraining (runs ``{ds}_best*``,
    ``--preset best`` alone), and each of ``BEST_ABLATIONS`` fine-tuned from the same
    pretraining. The item attributes are each dataset's ``attributes`` field (the fusion
    reads them; rows without the fusion take none). Last, on LastFM only, the ablation of
    ``--preset best`` alone (runs ``lastfm_best_{name}*``): it ran while the preset was the
    whole recipe, before validation picked the pretraining on both datasets; Beauty's
    (16 core-hours here) was not run, as it ablates a configuration that is not the recipe."""
    recipe, without_pretraining, ablations, preset_ablations = [], [], [], []
    for ds in ("LastFM", "Beauty"):
        key, data = ds.lower(), ("--data", _data(ds))
        pre = f"{key}_s3rec_aapseq_pre20"
        recipe += [r for r in _s3rec_aap_input() if r.name == pre]
        init = ("--init", f"{{root}}/{pre}")
        for seed in (None, 1, 2):
            suffix, seeded = _seeded(seed)
            best = ("--model", "composed", "--preset", "best", "--attributes", "attributes", *data, *seeded)
            recipe.append(Run(f"{key}_best_s3pre{suffix}", f"{ds} best", (*best, *init), needs=pre))
            without_pretraining.append(Run(f"{key}_best{suffix}", f"{ds} best without S3-Rec pretraining "
                                                                   "(--preset best alone)", best))
            for name, label, change in BEST_ABLATIONS:
                fused = "--side-information" not in change  # the fusion reads the attributes
                attributes = ("--attributes", "attributes") if fused else ()
                ablated = ("--model", "composed", "--preset", "best", *change, *attributes, *data, *seeded)
                ablations.append(Run(f"{key}_best_s3pre_{name}{suffix}", f"{ds} best {label}", (*ablated, *init),
                                     needs=pre))
                if ds == "LastFM":
                    preset_ablations.append(Run(f"{key}_best_{name}{suffix}",
                                                f"{ds} --preset best alone, {label}", ablated))
    return recipe + without_pretraining + ablations + preset_ablations


def _best_heldout() -> list[Run]:
    """The recipe on a dataset it was not chosen on: ml-100k (RecBole atomic files, 943
    users, 1682 items; the .item file's genres, field ``class``, as the attributes), with
    the commands a user runs: ``seqrec pretrain --preset best``, then ``--preset best``
    from it (rows "ML-100k best"), its closest rival on Beauty (without fusion and
    intentions, SASRec CE from the same pretraining), ``--preset best`` alone, the plain
    SASRec CE (neither the pretraining nor the fusion nor the intentions) and the rest of
    ``best``'s ablation (``BEST_ABLATIONS``), seeds 42, 1 and 2. Nothing was
    chosen on these rows; they test the claim that the preset is data-agnostic."""
    data, attributes = ("--data", _data("ml-100k")), ("--attributes", "class")
    pre = "ml100k_s3rec_pre20"
    runs = [Run(pre, "ML-100k S3-Rec pretraining, --preset best (20 epochs)",
                ("--model", "s3rec", "--preset", "best", *attributes, *data, "--epochs", "20"), command="pretrain")]
    init = ("--init", f"{{root}}/{pre}")
    neither = next(change for name, _, change in BEST_ABLATIONS if name == "neither")
    without_pretraining, ablations = [], []
    for seed in (None, 1, 2):
        suffix, seeded = _seeded(seed)
        best = ("--model", "composed", "--preset", "best", *data, *seeded)
        runs += [Run(f"ml100k_best_s3pre{suffix}", "ML-100k best", (*best, *attributes, *init), needs=pre),
                 Run(f"ml100k_best_s3pre_neither{suffix}", "ML-100k best without fusion and intentions (SASRec CE)",
                     (*best, *neither, *init), needs=pre)]
        without_pretraining += [Run(f"ml100k_best{suffix}", "ML-100k best without S3-Rec pretraining "
                                                            "(--preset best alone)", (*best, *attributes)),
                                Run(f"ml100k_best_neither{suffix}", "ML-100k SASRec CE (--preset best without "
                                    "pretraining, fusion and intentions)", (*best, *neither))]
        for name, label, change in BEST_ABLATIONS:
            if name != "neither":
                fused = "--side-information" not in change
                ablations.append(Run(f"ml100k_best_s3pre_{name}{suffix}", f"ML-100k best {label}",
                                     (*best, *change, *(attributes if fused else ()), *init), needs=pre))
    return runs + without_pretraining + ablations


# S3-Rec fine-tuning (and its no-pretraining row): the authors' budget, selected by the
# sampled protocol's MRR as their sampled-protocol runs are.
FINETUNE = ("--valid-ranking", "sampled", "--metric", "MRR", "--epochs", "200", "--patience", "10")


def _finetune(ds: str) -> tuple[str, ...]:
    """FINETUNE, except on LastFM all 200 epochs: its validation MRR peaks near epoch 10
    (a popularity-like model) and passes that peak only after 40+ epochs, so a patience
    of 10 keeps the early peak (SASRec BCE: best epoch 9, sampled test HR@10 .299)."""
    return FINETUNE if ds == "Beauty" else (*FINETUNE[:-1], "0")


# The same fine-tuning selected by the full ranking's NDCG@20 (the CLI's default), as the
# authors' full-ranking runs are, for the full-ranking targets. All 200 epochs: with full
# selection Beauty's SASRec BCE still improves near the end (the sasrec suite's
# beauty_bce, best at epoch 189), so a patience would cut the row without pretraining short.
FINETUNE_FULL = ("--epochs", "200", "--patience", "0")


def _s3rec_nopre(ds: str) -> list[Run]:
    """The fine-tuned model without pretraining (SASRec BCE), under both selections.
    Beauty's full-selection row is the sasrec suite's beauty_bce (the same command)."""
    key = ds.lower()
    return [Run(f"{key}_s3rec_nopre", f"{ds} SASRec BCE, no pretraining",
                ("--model", "sasrec", "--data", _data(ds), *_finetune(ds))),
            Run("beauty_bce" if ds == "Beauty" else f"{key}_s3rec_nopre_full",
                f"{ds} SASRec BCE, no pretraining, selected by full NDCG@20",
                ("--model", "sasrec", "--data", _data(ds), *FINETUNE_FULL))]


def _s3rec_pretrain_finetune(ds: str, name: str, pre: str, label: str, epochs: str, off=(),
                             full: bool = True, aap_input: str = "item", keep_every: str | None = None) -> list[Run]:
    """Pretraining run ``pre`` (``epochs`` epochs, objectives ``off`` switched off, AAP
    scored on ``aap_input``, with ``keep_every`` its snapshots), then fine-tuning run
    ``name`` initialised from it (and, with ``full``, ``name_full`` selected by the full
    ranking). The suites written before ``s3rec-aap-input`` ran with ``item``, the default
    of that time, and say so."""
    keep = ("--keep-every", keep_every) if keep_every else ()
    runs = [Run(pre, f"{ds} S3-Rec pretraining, {label}",
                ("--model", "s3rec", "--data", _data(ds), "--epochs", epochs, "--aap-input", aap_input, *off, *keep),
                command="pretrain")]
    return runs + _s3rec_finetunes(ds, name, pre, label, full)


def _s3rec_finetunes(ds: str, name: str, pre: str, label: str, full: bool = True,
                     snapshot: int | None = None) -> list[Run]:
    """Fine-tuning run ``name`` initialised from pretraining run ``pre`` (at its epoch
    ``snapshot``, a --keep-every snapshot, else its end), and with ``full`` ``name_full``
    selected by the full ranking."""
    weights = f"{{root}}/{pre}" + (f"/pretrain-epoch{snapshot}.pt" if snapshot else "")
    init = ("--model", "s3rec", "--data", _data(ds), "--init", weights)
    runs = [Run(name, f"{ds} S3-Rec, {label}", (*init, *_finetune(ds)), needs=pre, needs_epochs=snapshot)]
    if full:
        runs.append(Run(f"{name}_full", f"{ds} S3-Rec, {label}, selected by full NDCG@20",
                        (*init, *FINETUNE_FULL), needs=pre, needs_epochs=snapshot))
    return runs


# The objective ablations: each objective switched off in turn.
S3REC_ABLATIONS = (("no AAP", ("--no-aap",)), ("no MIP", ("--no-mip",)), ("no MAP", ("--no-map",)),
                   ("no SP", ("--no-sp",)))


def _s3rec() -> list[Run]:
    """The same model without pretraining (SASRec BCE, the fine-tuning's budget and model
    selection: each dataset's ``nopre`` rows), and on LastFM pretraining (150 epochs,
    AAP on the item embedding) then fine-tuning. Beauty at 150 epochs, and its objective
    ablations, run with AAP on the encoder output, the default, in ``s3rec-aap-input``."""
    runs = []
    for ds in ("Beauty", "LastFM"):
        runs += _s3rec_nopre(ds)
        if ds == "LastFM":
            runs += _s3rec_pretrain_finetune(ds, "lastfm_s3rec", "lastfm_s3rec_pre", "all objectives", "150")
    return runs


def _s3rec_short() -> list[Run]:
    """The main S3-Rec rows with 20 pretraining epochs instead of the paper's 150 (AAP on
    the item embedding): a budget one CPU core finishes in a sitting (~65 min of
    pretraining on Beauty beside another run), to measure how much of the pretraining
    gain a short run already gives; and Beauty without AAP (the ablation row both AAP
    readings share; the other ablations are ``s3rec-aap-input``'s). The ``nopre`` rows
    are the ``s3rec`` suite's own."""
    runs = []
    for ds in ("Beauty", "LastFM"):
        key = ds.lower()
        runs += _s3rec_nopre(ds)
        runs += _s3rec_pretrain_finetune(ds, f"{key}_s3rec_p20", f"{key}_s3rec_pre20", "20 pretraining epochs", "20")
        if ds == "Beauty":
            label, off = S3REC_ABLATIONS[0]
            runs += _s3rec_pretrain_finetune(ds, f"{key}_s3rec_noaap_p20", f"{key}_s3rec_noaap_pre20",
                                             f"20 pretraining epochs, {label}", "20", off, full=False)
    return runs


def _s3rec_seeds() -> list[Run]:
    """LastFM's fine-tuning rows of ``s3rec`` and ``s3rec-short`` (no pretraining, 20 and
    150 pretraining epochs; both selections) with three fine-tuning seeds, 42, 1 and 2,
    each starting from the same pretraining run: the spread its single runs and the
    target (sampled HR@10 >= .5835) are read against. The seed also draws the sampled
    protocol's negatives, so that spread is in it too. About 3 minutes a run on one core;
    the pretraining runs are those suites' own (listed here, as the fine-tuning runs
    need them)."""
    pre = {"20": "lastfm_s3rec_pre20", "150": "lastfm_s3rec_pre"}
    runs = [r for r in _s3rec_short() + _s3rec() if r.name in pre.values()]
    for seed in (None, 1, 2):
        suffix, seeded = _seeded(seed)
        for name, label, init in (("lastfm_s3rec_nopre", "no pretraining", None),
                                  ("lastfm_s3rec_p20", "S3-Rec, 20 pretraining epochs", "20"),
                                  ("lastfm_s3rec", "S3-Rec, 150 pretraining epochs", "150")):
            model = (("--model", "sasrec", "--data", _data("LastFM")) if init is None else
                     ("--model", "s3rec", "--data", _data("LastFM"), "--init", f"{{root}}/{pre[init]}"))
            for full in (False, True):
                runs.append(Run(f"{name}{'_full' if full else ''}{suffix}",
                                f"LastFM {label}, selected by {'full NDCG@20' if full else 'sampled MRR'}",
                                (*model, *(FINETUNE_FULL if full else _finetune("LastFM")), *seeded),
                                needs=None if init is None else pre[init]))
    return runs


def _reseeded(runs: list[Run], seeds=(1, 2)) -> list[Run]:
    """The fine-tuning runs among ``runs`` again with other ``seeds``, from the same
    pretraining (the seed draws what pretraining does not give: the fine-tuning's
    initialisation of the rest, sample order, negatives, dropout and the sampled
    protocol's negatives), in the same report rows."""
    copies = []
    for seed in seeds:
        suffix, seeded = _seeded(seed)
        copies += [dataclasses.replace(r, name=r.name + suffix, args=(*r.args, *seeded))
                   for r in runs if r.command == "train"]
    return copies


def _s3rec_aap_input() -> list[Run]:
    """S3-Rec with AAP scored on the encoder output at the item's unmasked position
    (``--aap-input sequence``: the authors' released code, and our default since this
    suite measured it) instead of on the item embedding (the paper's formula, which the
    ``s3rec``, ``s3rec-short`` and ``s3rec-seeds`` suites ran). 20 pretraining epochs,
    Beauty's objective ablations at that budget (the no-AAP run is ``s3rec-short``'s:
    without AAP the two readings are the same model), each fine-tuned with seeds 42, 1
    and 2; and Beauty at the paper's 150 epochs, also fine-tuned from that run's
    snapshots after 50 and 100 epochs (``--keep-every 10``; a snapshot is what a run of
    that many epochs gives: the runs are a pure function of their seed), with seeds 42,
    1 and 2 too."""
    runs = []
    for ds in ("Beauty", "LastFM"):
        key = ds.lower()
        short = _s3rec_pretrain_finetune(ds, f"{key}_s3rec_aapseq_p20", f"{key}_s3rec_aapseq_pre20",
                                         "20 pretraining epochs, AAP on the encoder output", "20",
                                         aap_input="sequence")
        if ds == "Beauty":
            short += [r for r in _s3rec_short() if r.name in ("beauty_s3rec_noaap_pre20", "beauty_s3rec_noaap_p20")]
            for label, off in S3REC_ABLATIONS[1:]:
                name = f"{key}_s3rec_aapseq" + "".join(o.replace("--no-", "_no") for o in off)
                short += _s3rec_pretrain_finetune(
                    ds, f"{name}_p20", f"{name}_pre20", f"20 pretraining epochs, AAP on the encoder output, {label}",
                    "20", off, full=False, aap_input="sequence")
        runs += short + _reseeded(short)
        if ds == "Beauty":
            pre = f"{key}_s3rec_aapseq_pre"
            long = _s3rec_pretrain_finetune(ds, f"{key}_s3rec_aapseq", pre,
                                            "150 pretraining epochs, AAP on the encoder output", "150",
                                            aap_input="sequence", keep_every="10")
            for epochs in (50, 100):  # the same run, fine-tuned from its snapshots
                long += _s3rec_finetunes(ds, f"{key}_s3rec_aapseq_p{epochs}", pre,
                                         f"{epochs} pretraining epochs, AAP on the encoder output", snapshot=epochs)
            runs += long + _reseeded(long)
    return runs


def _s3rec_sp_threads() -> list[Run]:
    """Beauty's recipe pretraining (``s3rec-aap-input``'s 20-epoch run with AAP on the
    encoder output) at two threads instead of one: its SP term saturated in epoch 2 and
    stayed at ln 2 per segment. Then the recipe's row without fusion and intentions
    (SASRec CE) fine-tuned from it with seed 42: what losing SP costs a fine-tune."""
    pre = next(r for r in _s3rec_aap_input() if r.name == "beauty_s3rec_aapseq_pre20")
    saturated = dataclasses.replace(pre, name="beauty_s3rec_aapseq_pre20_2threads",
                                    group="Beauty S3-Rec pretraining, 20 epochs, AAP on the encoder output, "
                                          "two threads (SP saturated)", threads=2)
    neither = next(r for r in _best() if r.name == "beauty_best_s3pre_neither")
    args = list(neither.args)
    args[args.index("--init") + 1] = f"{{root}}/{saturated.name}"
    return [saturated, Run("beauty_best_s3pre2t_neither", "Beauty best without fusion and intentions, from the "
                           "two-thread pretraining (SP saturated)", tuple(args), needs=saturated.name)]


SUITES = {"sasrec": _sasrec, "sine": _sine, "difsr-paper": _difsr_paper, "difsr-ablation": _difsr_ablation,
          "dss": _dss, "dss-weight": _dss_weight, "dss-beta": _dss_beta, "dss-lambda": _dss_lambda,
          "dss-temperature": _dss_temperature, "dss-sampled": _dss_sampled, "dss-long": _dss_long,
          "dss-pretrain": _dss_pretrain, "compose": _compose, "best": _best, "best-heldout": _best_heldout,
          "s3rec": _s3rec, "s3rec-short": _s3rec_short,
          "s3rec-seeds": _s3rec_seeds, "s3rec-aap-input": _s3rec_aap_input,
          "s3rec-sp-threads": _s3rec_sp_threads}


def suite_runs(name: str, root: Path) -> list[Run]:
    runs = SUITES[name]()
    # The root is known only now: fill it into arguments that name another run's folder.
    return [dataclasses.replace(r, args=tuple(a.replace("{root}", str(root)) for a in r.args)) for r in runs]


def seqrec_executable() -> list[str]:
    found = shutil.which("seqrec", path=str(Path(sys.executable).parent)) or shutil.which("seqrec")
    return [found] if found else [sys.executable, "-m", "seqrec.cli"]


# ---------------------------------------------------------------------------- run
def run_suite(runs: list[Run], suite: list[Run], root: Path, jobs: int, threads: int | None,
              device: str | None = None) -> int:
    """Runs the unfinished ``runs`` (a selection of ``suite``), ``jobs`` at a time, on
    ``device`` (default: each command's own, the CPU)."""
    root.mkdir(parents=True, exist_ok=True)
    by_name = {r.name: r for r in suite}
    pending = [r for r in runs if not r.finished(root)]
    print(f"{len(runs) - len(pending)} of {len(runs)} runs finished; {len(pending)} to go ({jobs} at a time)")
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    active: dict[str, tuple[subprocess.Popen, float]] = {}
    failed: set[str] = set()
    announced: set[str] = set()  # runs found being trained by another process
    while pending or active:
        for name, (proc, start) in list(active.items()):
            if proc.poll() is None:
                continue
            del active[name]
            status = "finished" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            print(f"  {name}: {status} after {(time.time() - start) / 60:.1f} min; log {root / name}.log")
            if proc.returncode != 0:
                failed.add(name)
        for r in [r for r in pending if r.needs in failed and not r.ready(root, by_name)]:
            print(f"  {r.name}: skipped, it needs {r.needs}, which failed")
            failed.add(r.name)
            pending.remove(r)
        for r in [r for r in pending if r.finished(root)]:  # by another process, meanwhile
            print(f"  {r.name}: finished by another process")
            pending.remove(r)
        # A folder another process is training (seqrec locks its --out) is waited for,
        # never resumed a second time.
        busy = {r.name for r in pending if run_folder_in_use(r.folder(root))}
        for name in sorted(busy - announced):
            print(f"  {name}: another process is training it; waiting for it to end")
        announced |= busy
        ready = [r for r in pending if r.name not in busy and r.ready(root, by_name)]
        for r in ready[:max(jobs - len(active), 0)]:
            pending.remove(r)
            argv = r.argv(root, device)
            print(f"  {'resuming' if '--resume' in argv else 'starting'} {r.name}: seqrec {' '.join(argv)}")
            run_env = env if r.threads is None else dict(env, OMP_NUM_THREADS=str(r.threads))
            with open(root / f"{r.name}.log", "a") as log:  # the child keeps its own handle
                proc = subprocess.Popen(seqrec_executable() + argv, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=run_env)
            active[r.name] = (proc, time.time())
        elsewhere = busy or any(r.needs is not None and run_folder_in_use(by_name[r.needs].folder(root))
                                for r in pending)
        if not active and pending and not elsewhere:
            waiting = ", ".join(f"{r.name} (needs {r.needs}"
                                + (f" up to epoch {r.needs_epochs}" if r.needs_epochs else "")
                                + ", not finished and not selected)" for r in pending)
            print(f"  cannot start: {waiting}")
            return 1
        time.sleep(2)
    return 1 if failed else 0


# ---------------------------------------------------------------------------- archive
RECORDS = ("result.json", "pretrain.jsonl")  # result.json holds the training history too
RESULTS = REPO_ROOT / "benchmarks" / "results"


def archive(runs: list[Run], root: Path, dest: Path) -> list[str]:
    """Copies the records (``RECORDS``, no weights) of the finished ``runs`` under
    ``root`` to ``dest/<run name>/``; returns the names copied. A run already archived
    is replaced (the run may have been extended since)."""
    copied = []
    for r in runs:
        if not r.finished(root) or r.folder(root).resolve() == r.folder(dest).resolve():
            continue
        target = r.folder(dest)
        staging = target.with_name(f".{r.name}.partial")  # never leave a half-copied record
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for record in RECORDS:
            if (r.folder(root) / record).exists():
                shutil.copy2(r.folder(root) / record, staging / record)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        copied.append(r.name)
    return copied


# ---------------------------------------------------------------------------- report
def _result(run: Run, root: Path) -> dict | None:
    path = run.folder(root) / "result.json"
    return read_record(path) if run.command == "train" and path.exists() else None


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def status_line(run: Run, root: Path) -> str:
    """One line on a run: state (finished / running / killed / new), epochs done of its
    budget, the best validation value so far and the last epoch's seconds."""
    if run.finished(root):
        state = "finished"
    elif run_folder_in_use(run.folder(root)):
        state = "running"
    else:
        state = "killed" if run.started(root) else "new"
    log = run.folder(root) / ("history.jsonl" if run.command == "train" else "pretrain.jsonl")
    records = read_record(log) if log.exists() else []
    if not records and run.finished(root) and run.command == "train":  # archived: result.json only
        records = read_record(run.folder(root) / "result.json").get("history", [])
    budget = run.args[run.args.index("--epochs") + 1] if "--epochs" in run.args else "?"
    line = f"{run.name:28s} {state:8s} epoch {len(records)}/{budget}"
    valid = [(r["epoch"], r["valid"]) for r in records if "valid" in r]
    if valid:
        metric = run.args[run.args.index("--metric") + 1] if "--metric" in run.args else "NDCG@20"
        epoch, best = max(valid, key=lambda v: v[1].get(metric, float("-inf")))
        line += f", best valid {metric} {best.get(metric, float('nan')):.4f} (epoch {epoch})"
    if records:
        seconds = records[-1].get("train_seconds", records[-1].get("seconds"))
        if seconds is not None:
            line += f", last epoch {seconds:.0f} s"
    return line


METRIC_TABLES = {"sampled": "test_sampled", "valid": "best_valid"}


def _metric(result: dict, name: str) -> float | None:
    """``HR@10`` reads the full-ranking test metrics, ``sampled:HR@10`` the sampled ones,
    ``valid:NDCG@20`` the validation metrics of the selected epoch (what selected it)."""
    prefix, _, key = name.rpartition(":")
    return result.get(METRIC_TABLES[prefix] if prefix else "test_full", {}).get(key)


def report(runs: list[Run], root: Path, metrics: tuple[str, ...] = METRICS) -> str:
    """A markdown table of test metrics, one row per group (mean +- sd over seeds)."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        if r.command == "train":
            groups.setdefault(r.group, []).append(r)
    lines = [f"test metrics (full ranking unless marked sampled:; valid: the selected epoch's validation); "
             f"mean +- sd over the finished runs of a row "
             f"(root {root})", "",
             "| model | runs | best epoch | " + " | ".join(metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    missing = []
    for group, members in groups.items():
        results = [(r, _result(r, root)) for r in members]
        got = [res for _, res in results if res is not None]
        missing += [r.name for r, res in results if res is None]
        epochs = ", ".join(str(res["best_epoch"]) for res in got) or "-"
        cells = [_cell([v for v in (_metric(res, m) for res in got) if v is not None]) for m in metrics]
        lines.append(f"| {group} | {len(got)}/{len(members)} | {epochs} | " + " | ".join(cells) + " |")
    if missing:
        lines += ["", "not finished: " + ", ".join(missing)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the suites and their runs")
    for action in ("status", "commands", "run", "report", "archive"):
        p = sub.add_parser(action)
        p.add_argument("suite", choices=sorted(SUITES))
        p.add_argument("--root", type=Path, default=REPO_ROOT / "runs", help="folder of the runs (default: runs/)")
        p.add_argument("--only", nargs="+", default=None, metavar="RUN", help="these runs of the suite only")
        if action == "report":
            p.add_argument("--metrics", nargs="+", default=list(METRICS), metavar="METRIC",
                           help="columns: HR@K, NDCG@K, MRR (full ranking), sampled:HR@K ... (sampled ranking) "
                                "or valid:NDCG@K ... (validation at the selected epoch) "
                                f"(default: {' '.join(METRICS)})")
        if action == "archive":
            p.add_argument("--to", type=Path, default=RESULTS,
                           help="where the records go (default: benchmarks/results/)")
        if action in ("run", "commands"):
            p.add_argument("--device", default=None,
                           help="--device of every seqrec call: cuda, cuda:1 ... (default: the CPU); a "
                                "started run resumes on it")
        if action == "run":
            p.add_argument("--jobs", type=int, default=1, help="runs at a time (default: 1)")
            p.add_argument("--threads", type=int, default=None,
                           help="OMP_NUM_THREADS of each run (default: inherited)")
    args = parser.parse_args(argv)
    if args.action == "list":
        for name in SUITES:
            runs = suite_runs(name, Path("ROOT"))
            print(f"{name}: {len(runs)} runs: " + ", ".join(r.name for r in runs))
        return 0
    root = args.root.resolve()
    suite = runs = suite_runs(args.suite, root)
    if args.only:
        unknown = sorted(set(args.only) - {r.name for r in runs})
        if unknown:
            parser.error(f"not runs of suite {args.suite}: {', '.join(unknown)}")
        runs = [r for r in runs if r.name in args.only]
    if getattr(args, "device", None) is not None:
        # run: seqrec's own check, before any run starts (a suite of hours must not fail
        # one run at a time); commands lists what another machine would run: parsed only.
        try:
            torch.device(args.device) if args.action == "commands" else check_device(args.device)
        except (RuntimeError, ValueError) as err:
            parser.error(str(err) if isinstance(err, ValueError) else f"--device {args.device}: {err}")
    if args.action == "status":
        for r in runs:
            print(status_line(r, root))
        return 0
    if args.action == "commands":
        for r in runs:
            state = "finished" if r.finished(root) else "resume" if r.started(root) else "new"
            threads = f"OMP_NUM_THREADS={r.threads} " if r.threads is not None else ""
            print(f"[{state}] {threads}seqrec {' '.join(r.argv(root, args.device))}")
        return 0
    if args.action == "report":
        bad = [m for m in args.metrics if m.rpartition(":")[0] not in ("", *METRIC_TABLES)]
        if bad:
            parser.error(f"--metrics {' '.join(bad)}: a metric is NAME@K or MRR, prefixed by nothing (full-ranking "
                         f"test), {', '.join(p + ':' for p in METRIC_TABLES)}")
        print(report(runs, root, tuple(args.metrics)))
        return 0
    if args.action == "archive":
        copied = archive(runs, root, args.to.resolve())
        print(f"archived {len(copied)} finished run(s) of {len(runs)} to {args.to}: {', '.join(copied) or '-'}")
        return 0
    if not (SHARED_DATA / "Beauty").exists():
        print(f"data not found at {SHARED_DATA} (set SEQREC_SHARED_DATA)", file=sys.stderr)
        return 1
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    return run_suite(runs, suite, root, args.jobs, args.threads, args.device)


if __name__ == "__main__":
    sys.exit(main())

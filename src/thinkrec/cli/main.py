"""The ``thinkrec`` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from thinkrec import __version__
from thinkrec.allocator import tune_allocator
from thinkrec.errors import ThinkrecError
from thinkrec.progress import log_to_stderr

CONFIG_HELP = "a config file (.toml/.yaml) or the name of a bundled preset (list them with: thinkrec config show)"
# The demo's cap on training epochs per model: two to three minutes for its three models on a 2-core CPU
DEMO_EPOCHS = 8
OVERRIDE_HELP = "dotted overrides applied after the config, e.g. train.lr=0.002 model.hidden=128 eval.ks=[10,20]"
DEPTH_HELP = (
    "reasoning models: choose each user's reasoning step with this depth selector: fixed[:k], mean, best-fixed,"
    " weights, agree, agree-kl, entropy, router, router-prefix, or none (default: the run's eval.depth)."
    " Selectors with thresholds or weights are fit once on the run's validation samples (never test) and saved"
    " in the run directory"
)


def _add_config_args(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    parser.add_argument("config", nargs="?" if optional else None, help=CONFIG_HELP)
    parser.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)


def build_parser() -> argparse.ArgumentParser:
    from thinkrec.cli import commands as c

    parser = argparse.ArgumentParser(
        prog="thinkrec",
        description="Sequential recommendation whose models think before they recommend.",
        epilog=(
            "examples:\n"
            "  thinkrec demo                                   # popularity vs SASRec vs SASRec + PRL, ~3 minutes\n"
            "  thinkrec train ml100k-sasrec train.epochs=50    # a preset with an override\n"
            "  thinkrec evaluate runs/ml100k-sasrec-s2020 --mask-history\n"
            "  thinkrec recommend runs/ml100k-sasrec-s2020 --history 50,172,133 -k 10\n"
            "datasets are read from $THINKREC_DATA_DIR (e.g. export THINKREC_DATA_DIR=../shared/data)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"thinkrec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="most popular vs SASRec vs SASRec + PRL reasoning on MovieLens-100K (short), per-step table"
    )
    demo.add_argument(
        "--epochs", type=int, default=DEMO_EPOCHS, help=f"most training epochs per model (default {DEMO_EPOCHS})"
    )
    demo.add_argument("--run-dir", help="the demo folder, one run directory per model in it (default runs/demo)")
    demo.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    demo.set_defaults(func=c.cmd_demo)

    data = sub.add_parser("data", help="prepare and describe datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    prep = data_sub.add_parser(
        "prepare", help="read, filter and cache a dataset (Parquet + JSON) as a config's data section says"
    )
    _add_config_args(prep)
    prep.set_defaults(func=c.cmd_data_prepare)
    desc = data_sub.add_parser("describe", help="statistics of a dataset and of its split")
    desc.add_argument("config", help=CONFIG_HELP + ", or a prepared dataset folder")
    desc.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    desc.set_defaults(func=c.cmd_data_describe)

    train = sub.add_parser(
        "train",
        help="train a model; early-stops on validation and evaluates the best checkpoint on test",
        description="Train a model. Re-running the same command in the same run directory resumes it.",
    )
    _add_config_args(train)
    train.add_argument("--run-dir", help="output folder (default runs/<data>-<model>-s<seed>)")
    train.set_defaults(func=c.cmd_train)

    ev = sub.add_parser("evaluate", help="evaluate a trained run on the full catalogue")
    ev.add_argument("run_dir", help="a run directory written by thinkrec train")
    ev.add_argument("--split", choices=["valid", "test"], default="test", help="which samples (default test)")
    ev.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    mask = ev.add_mutually_exclusive_group()
    mask.add_argument(
        "--mask-history",
        dest="mask_history",
        action="store_true",
        default=None,
        help="exclude history items from the ranking",
    )
    mask.add_argument(
        "--no-mask-history",
        dest="mask_history",
        action="store_false",
        help="rank history items too (the default of most papers)",
    )
    ev.add_argument("--ks", help="comma-separated cut-offs, e.g. 5,10,20")
    ev.add_argument("--output", help="also write the report (metrics + protocol) to this JSON file")
    ev.add_argument(
        "--steps",
        type=int,
        metavar="K",
        help="reasoning models: reason for K steps instead of the trained K (0 = the plain backbone)",
    )
    ev.add_argument(
        "--autocast",
        choices=["none", "bf16"],
        help=(
            "encode histories in bfloat16: faster only on CPUs with AMX or AVX512-BF16, about 10x slower"
            " elsewhere (thinkrec warns); scores stay float32"
        ),
    )
    ev.add_argument(
        "--depth",
        metavar="NAME",
        help=DEPTH_HELP + "; its metrics are shown next to fixed K, with the steps it used",
    )
    ev.add_argument(
        "--no-steps",
        dest="per_step",
        action="store_false",
        help=(
            "score the inference mode only, as serving does: no per-step table; with --depth the evaluation halts "
            "(a sample whose choice needs no further reasoning step gets none) and the metrics are the selector's"
        ),
    )
    ev.set_defaults(func=c.cmd_evaluate)

    rec = sub.add_parser("recommend", help="top-K items with titles for a history or a dataset user")
    rec.add_argument("run_dir", help="a run directory written by thinkrec train")
    rec.add_argument("--history", help="external item ids, oldest first, separated by commas")
    rec.add_argument("--user", help="an external user id of the run's dataset (uses the whole sequence)")
    rec.add_argument("-k", type=int, default=10, help="how many items, 1..1000 (default 10)")
    rec.add_argument("--exclude-seen", action="store_true", help="never recommend items of the history")
    rec.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    rec.add_argument(
        "--show-steps", action="store_true", help="reasoning models: the top-K of every step r_0..r_K side by side"
    )
    rec.add_argument("--depth", metavar="NAME", help=DEPTH_HELP)
    rec.set_defaults(func=c.cmd_recommend)
    _add_recommend_batch_args(rec)
    _add_serve_parser(sub)
    _add_llm_parser(sub)

    config = sub.add_parser("config", help="show configuration keys, defaults and presets")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser(
        "show", help="every key with its default and description; with a config: its resolved values"
    )
    _add_config_args(show, optional=True)
    show.set_defaults(func=c.cmd_config_show)
    return parser


# --- serving -------------------------------------------------------------------------------------------------


def _add_recommend_batch_args(rec: argparse.ArgumentParser) -> None:
    """``thinkrec recommend RUN_DIR --batch INPUT --output OUT``: top-K for every user of a file."""
    from thinkrec.cli import commands as c

    rec.add_argument(
        "--batch",
        metavar="INPUT",
        help="recommend for every user of INPUT (.parquet/.csv/.jsonl; columns user, items) instead",
    )
    rec.add_argument("--output", metavar="OUT", help="with --batch: where to write top-K rows (.parquet or .csv)")
    rec.add_argument(
        "--id-type",
        choices=["internal", "external"],
        default="external",
        help="with --batch: the ids in INPUT's items column (default external)",
    )
    rec.add_argument("--chunk-size", type=int, default=1024, help="with --batch: users per chunk (default 1024)")
    rec.set_defaults(func=c.cmd_recommend_or_batch)


def _add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``thinkrec serve RUN_DIR``: the HTTP API and web page."""
    from thinkrec.cli import commands as c

    serve = sub.add_parser(
        "serve", help="serve a trained run over HTTP (API + web page; needs pip install 'thinkrec[serve]')"
    )
    serve.add_argument(
        "run_dir",
        help="a run directory of thinkrec train, or of thinkrec llm train (R²ec: answers include its reasoning)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1, local only)")
    serve.add_argument("--port", type=int, default=8000, help="port, 1..65535 (default 8000)")
    serve.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help=(
            "also answer requests whose Host header names NAME (repeatable; default: localhost, 127.0.0.1,"
            " [::1] and --host); other names get 400, so a web page cannot reach the API by DNS rebinding"
        ),
    )
    serve.add_argument(
        "--ann",
        action="store_true",
        help="approximate top-K through a FAISS HNSW index, for very large catalogues (pip install 'thinkrec[ann]')",
    )
    serve.add_argument(
        "--depth",
        metavar="NAME",
        help=DEPTH_HELP + " before the server starts; a request's depth field chooses another",
    )
    serve.set_defaults(func=c.cmd_serve)


# --- LLM recommender, R²ec -----------------------------------------------------------------------------------


def _add_llm_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``thinkrec llm prepare-model|train|evaluate|recommend`` (verbs live in :mod:`thinkrec.llm.cli`)."""
    from thinkrec.cli import commands as c
    from thinkrec.llm.cli import add_llm_parser

    add_llm_parser(sub, {"recommend": c.cmd_llm_recommend, "evaluate": c.cmd_llm_evaluate})


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; dotted overrides may also come after options (``train P --run-dir D a.b=1``),
    where argparse alone would reject them because the positional list already ended."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    log_to_stderr()  # the trainer's epoch lines (when no bars are drawn), trackers, evaluation: on stderr
    tune_allocator()  # freed tensor memory stays in the process: no page fault per new tensor
    quiet: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if os.environ.get("RANK", "0") != "0" and args.func.__name__ == "cmd_train":
        # torchrun's other processes: rank 0 prints the run's report, once
        quiet = contextlib.redirect_stdout(open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
    try:
        with quiet:
            code: int = args.func(args)
    except ThinkrecError as exc:
        print(f"thinkrec: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("\nthinkrec: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

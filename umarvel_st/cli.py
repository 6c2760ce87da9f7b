"""The ``umarvel`` command: one entry point, one subcommand per job.

Each subcommand lives in the module that owns the work; the module exposes ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their subcommand runs, so ``umarvel --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("umarvel_st.demo", "score the embedded model on held-out synthetic queries: Recall@k, top hits"),
    "make-synthetic": ("umarvel_st.data.synthetic", "write the synthetic M-BEIR-format benchmark"),
    "eval": ("umarvel_st.evaluation.cli", "evaluate a model (M-BEIR format)"),
    "train": ("umarvel_st.train.runner", "train a model with a staged recipe (YAML)"),
    "convert": ("umarvel_st.hub.convert", "convert an official U-MARVEL checkpoint into an umarvel-st model"),
    "publish": ("umarvel_st.hub.publish", "write (and push) a Hub repository for a model, with its model card"),
    "mine": ("umarvel_st.train.mining", "mine ranked lists of the training pools with a model (hard negatives)"),
    "distill-data": (
        "umarvel_st.train.distill",
        "write stage-5 distillation rows (stage-4 model + re-ranker teacher)",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``umarvel`` command line with ``argv`` (defaults to ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="umarvel", description="U-MARVEL embedders on sentence-transformers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    # Only the chosen subcommand's module is imported (heavy imports stay out of `umarvel --help`).
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(sub_parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # weight-loading reports and bars are noise for command-line users
        hf_logging.disable_progress_bar()
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

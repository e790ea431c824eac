"""The ``ensemblehub`` command: ``ask``, ``run`` (datasets), ``calibrate``, ``models``, ``serve``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensemblehub_core.exceptions import EnsembleHubError, InputError
from ensemblehub_core.types import EnsembleResult, Message, RoundTrace

if TYPE_CHECKING:
    from ensemblehub_core.calibration import CalibrationReport
    from ensemblehub_core.engine import Ensemble
    from ensemblehub_core.strategies.choice import ChoiceParams

__all__ = ["main"]

DEMO_QUESTIONS = [
    "What is the capital of France? Answer in one sentence.",
    "What is 15 + 27? Answer with the number.",
    "Give one word that rhymes with 'cat'.",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ensemblehub", description="LLM ensemble inference")
    p.add_argument("-v", "--verbose", action="store_true", help="log loading and progress details")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="YAML config (default: the packaged config with the embedded models)")
        sp.add_argument("--ensemble", help="ensemble name (default: the config's default)")
        sp.add_argument("--max-tokens", type=int)
        sp.add_argument("--temperature", type=float)
        sp.add_argument("--seed", type=int)

    ask = sub.add_parser("ask", help="answer questions and print each round's trace")
    common(ask)
    ask.add_argument("questions", nargs="*", help="questions (default: a few demo questions)")
    ask.add_argument("--no-trace", action="store_true", help="print only the answers")
    ask.add_argument("--stream", action="store_true", help="print segments as they are accepted")

    run = sub.add_parser("run", help="run a dataset (JSON/JSONL) and write JSONL results")
    common(run)
    run.add_argument("--input", required=True, help="JSON or JSONL with a question/prompt/messages field")
    run.add_argument("--output", required=True, help="JSONL output, one line per example")
    run.add_argument("--max-examples", type=int)
    run.add_argument("--resume", action="store_true",
                     help="continue a run: keep the output's finished examples, run the rest (failed ones again)")
    run.add_argument("--overwrite", action="store_true", help="replace an output that already holds results")
    run.add_argument("--full-trace", action="store_true", help="store every candidate's text in the trace")

    cal = sub.add_parser("calibrate", help="fit per-member confidence calibration and panel weights on a dev set")
    common(cal)
    cal.add_argument("--dev", required=True, help="JSON or JSONL dev set with a question/prompt/messages field")
    cal.add_argument("--answer-field", default="answer", help="the field holding the reference answer")
    cal.add_argument("--extractor", default="auto", help="final-answer extractor: auto, choice, last_number, ...")
    cal.add_argument("--heldout", type=float, default=0.3, help="share of the dev items kept out of the fit")
    cal.add_argument("--output", required=True, help="where to write the calibrated config (YAML)")
    cal.add_argument("--batch", type=int, default=8,
                     help="dev items each member answers together (decoded in shared passes where the backend "
                     "batches; 1: one at a time)")

    models = sub.add_parser("models", help="list the configured ensembles and their members")
    models.add_argument("--config")
    models.add_argument("--json", action="store_true")

    folder = sub.add_parser("folder", help="print the local transformers folder of a model source (converting a "
                            "GGUF once), e.g. as lm_eval's tokenizer=")
    folder.add_argument("source", help="a model source as in a config: embedded:NAME, a .gguf file, a folder")

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server for the configured ensembles")
    serve.add_argument("--config")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=9876)
    serve.add_argument("--api-key", help="require this bearer key; visible to other users in the process list, so "
                       "prefer --api-key-file or ENSEMBLEHUB_API_KEY")
    serve.add_argument("--no-ui", action="store_true", help="do not serve the browser page at /ui")
    serve.add_argument("--api-key-file", help="require the bearer keys in this file (one per line)")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in {"max_tokens": args.max_tokens, "temperature": args.temperature,
                              "seed": args.seed}.items() if v is not None}


def _print_trace(rounds: list[RoundTrace]) -> None:
    for r in rounds:
        scores = ", ".join(
            f"{c.member}={'-' if s is None else f'{s:.3f}'}"
            for c, s in zip(r.candidates, r.scores or [None] * len(r.candidates), strict=False)
        )
        failed = "".join(f" [{m} failed: {e}]" for m, e in r.errors.items())
        print(f"  round {r.index}: winner {r.winner} ({scores}) {r.accepted_tokens} tok "
              f"gen {r.generate_s:.2f}s score {r.score_s:.2f}s{failed} {json.dumps(r.accepted_text)}")
        if r.note:
            print(f"    {r.note}")


def _print_result(question: str, result: EnsembleResult, trace: bool) -> None:
    print(f"\nQ: {question}")
    print(f"A: {result.text.strip()}")
    u = result.usage
    print(f"   [{result.strategy}, {len(result.trace)} rounds, finish={result.finish_reason}, "
          f"{u.completion_tokens} tokens kept / {sum(u.member_tokens.values())} generated, {result.elapsed_s:.1f}s]")
    if trace:
        _print_trace(result.trace)


def _cmd_ask(args: argparse.Namespace) -> int:
    from ensemblehub_core.hub import Hub

    hub = Hub(args.config)
    ens = hub.ensemble(args.ensemble)
    print(f"ensemble '{ens.name}': members {', '.join(ens.members)}; strategy {ens.strategy.name}; "
          f"scorers {', '.join(ens.panel.names) if ens.panel else 'none'}")
    for q in args.questions or DEMO_QUESTIONS:
        if args.stream:
            print(f"\nQ: {q}\nA: ", end="", flush=True)
            for chunk in ens.stream(q, **_overrides(args)):
                print(chunk.text, end="", flush=True)
                if chunk.result is not None and not args.no_trace:
                    print()
                    _print_trace(chunk.result.trace)
            print()
        else:
            _print_result(q, ens.generate(q, **_overrides(args)), not args.no_trace)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ensemblehub_core.batch import check_paths, run_batch
    from ensemblehub_core.hub import Hub

    # Before any model loads: a run that would lose results or could not write them stops here.
    check_paths(args.input, args.output, resume=args.resume, overwrite=args.overwrite)
    ens = Hub(args.config).ensemble(args.ensemble)
    bar = tqdm(desc=f"{ens.name}", unit="ex", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        summary = run_batch(ens, args.input, args.output, max_examples=args.max_examples, resume=args.resume,
                            overwrite=args.overwrite, params=_overrides(args), progress=progress,
                            full_trace=args.full_trace)
    finally:
        bar.close()
    print(f"{summary.done} done, {summary.failed} failed, {summary.skipped} skipped (already in the output) "
          f"in {summary.elapsed_s:.1f}s -> {args.output}")
    if summary.failed:
        print(f"{summary.failed} examples failed (their lines hold the error); fix the cause and rerun with --resume "
              "to run them again", file=sys.stderr)
        return 1
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import yaml

    from ensemblehub_core import calibration as cal
    from ensemblehub_core.batch import read_examples
    from ensemblehub_core.config import default_config_path, load_config
    from ensemblehub_core.hub import Hub
    from ensemblehub_core.strategies.choice import ChoiceStrategy

    config_path = Path(args.config) if args.config else default_config_path()
    hub = Hub(load_config(config_path))
    ens = hub.ensemble(args.ensemble)
    if Path(args.output).resolve() == config_path.resolve():
        raise InputError("--output is the config being calibrated; write the calibrated config to a new file")
    items = []
    for ex in read_examples(args.dev):
        if ex.error or ex.messages is None:
            raise InputError(f"{args.dev}: example '{ex.id}': {ex.error}")
        if args.answer_field not in ex.fields:
            raise InputError(f"{args.dev}: example '{ex.id}' has no '{args.answer_field}' field; "
                             "name the reference answer's field with --answer-field")
        items.append((ex.id, ex.messages, str(ex.fields[args.answer_field])))
    fit_ids, heldout_ids = cal.split([i for i, _, _ in items], args.heldout)  # a bad share fails before any work
    if args.batch < 1:
        raise InputError(f"--batch must be at least 1, got {args.batch}")
    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    if isinstance(ens.strategy, ChoiceStrategy):
        report = _calibrate_choice(ens, ens.strategy.params, items, args.heldout)
    else:
        report = _calibrate_panel(ens, items, fit_ids, heldout_ids, args, hub.config.defaults.max_tokens)
    cal.write_config(cal.apply(data, ens.name, report), args.output)
    print(f"wrote {args.output}")
    return 0


def _progress(what: str) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        print(f"\r  {done}/{total} dev items {what}", end="", file=sys.stderr, flush=True)

    return show


def _print_heldout(title: str, alone: dict[str, float], configured: tuple[str, float], fitted: tuple[str, float],
                   subject: str, dev_items: int) -> None:
    """Held-out accuracy of each member alone, the ensemble as configured and as fitted (``(label, accuracy)``);
    a warning on stderr, naming the fit as ``subject``, when the fit does worse than one of the others."""
    print(title)
    for name, acc in alone.items():
        print(f"  {name} alone: {acc:.3f}")
    width = len(configured[0]) + 2
    for label, acc in (configured, fitted):
        print(f"  {label + ':':<{width}}{acc:.3f}")
    # A fit on a small dev file can follow its quirks (e.g. which option letter happens to be right most often)
    # and pick worse than one member alone; say so rather than let a worse config pass unnoticed.
    rival, rival_acc = max([(f"the {configured[0]}", configured[1]), *((f"{n} alone", a) for n, a in alone.items())],
                           key=lambda pair: pair[1])
    if fitted[1] < rival_acc:
        print(f"warning: on the held-out items {subject} ({fitted[1]:.3f}) picks worse than {rival} "
              f"({rival_acc:.3f}). The fit may follow chance patterns of these {dev_items} dev items: add dev "
              "items (a few hundred) and calibrate again, or keep the configuration that did better",
              file=sys.stderr)


def _calibrate_panel(ens: Ensemble, items: list[tuple[str, list[Message], str]], fit_ids: list[str],
                     heldout_ids: list[str], args: argparse.Namespace, default_max: int | None) -> CalibrationReport:
    """Confidence calibration and panel weights: each member answers, the panel scores, the fit learns which
    scores mark right answers."""
    import asyncio

    from ensemblehub_core import calibration as cal
    from ensemblehub_core.answers import answer_key, get_extractor

    extract = get_extractor(args.extractor)

    def key(text: str) -> str | None:
        value = extract(text)
        return None if value is None else answer_key(value)

    def right(text: str, ref: str) -> bool:
        found = key(text)
        return found is not None and found == key(ref)

    max_tokens = int(args.max_tokens or default_max or 256)
    records = asyncio.run(cal.collect(ens.members, ens.panel, items, right, max_tokens,
                                      _progress("answered and scored"), batch=args.batch))
    print(file=sys.stderr)
    by_id = {r.id: r for r in records}
    fitted = [by_id[i] for i in fit_ids]
    held = [by_id[i] for i in heldout_ids]
    report = cal.fit(fitted, ens.panel, list(ens.members))
    before = cal.select_accuracy(held, ens.panel)
    after = cal.select_accuracy(held, ens.panel, report.weights, report.calibration)
    alone = {name: sum(r.correct[i] for r in held) / len(held) for i, name in enumerate(ens.members)}
    _print_heldout(f"fitted on {len(fitted)} items, accuracy on {len(held)} held-out items (best of the members' "
                   "answers):", alone, ("panel as configured", before), ("panel calibrated", after),
                   "the calibrated panel", len(items))
    for member, (a, b) in report.calibration.items():
        print(f"  confidence calibration {member}: slope {a:.3f}, intercept {b:.3f}")
    if report.weights:
        print("  weights: " + ", ".join(f"{n} {w:.3f}" for n, w in report.weights.items()))
    return report


def _calibrate_choice(ens: Ensemble, params: ChoiceParams, items: list[tuple[str, list[Message], str]],
                      heldout: float) -> CalibrationReport:
    """A ``choice`` ensemble's member weights: each member reads every dev question's options, and the pool's
    weights are fitted so the right options come out likeliest."""
    from ensemblehub_core import calibration as cal

    readings, skipped = cal.read_choices(ens.members, items, params.shifts, _progress("read"))
    print(file=sys.stderr)
    if skipped:
        print(f"  skipped {len(skipped)} item(s) without lettered options or whose reference names none of them: "
              + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""), file=sys.stderr)
    if len(readings) < 2:
        raise InputError(
            f"{len(readings)} of {len(items)} dev items are multiple-choice questions the members could read; the "
            "fit and the held-out part each need some: give questions whose last user message lists lettered "
            "options (A. ..., B. ...) and a reference that names the right letter"
        )
    by_id = {r.id: r for r in readings}
    fit_ids, heldout_ids = cal.split(list(by_id), heldout)
    fitted, held = [by_id[i] for i in fit_ids], [by_id[i] for i in heldout_ids]
    members = list(ens.members)
    configured = {m: float(params.weights.get(m, 1.0)) for m in members}
    weights = cal.fit_pool(fitted, members)
    _print_heldout(f"fitted on {len(fitted)} items, accuracy on {len(held)} held-out items (pooled option choice):",
                   {name: cal.pool_accuracy(held, {name: 1.0}) for name in members},
                   ("weights as configured", cal.pool_accuracy(held, configured)),
                   ("weights fitted", cal.pool_accuracy(held, weights)), "the fitted pool", len(readings))
    print("  weights: " + ", ".join(f"{n} {w:.3f}" for n, w in weights.items()))
    return cal.CalibrationReport(pool_weights=weights)


def _cmd_models(args: argparse.Namespace) -> int:
    from ensemblehub_core.hub import Hub
    from ensemblehub_core.registry import BACKENDS, SCORERS, STRATEGIES

    hub = Hub(args.config)
    info = hub.describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"config: {hub.config.source}")
    for e in info:
        mark = " (default)" if e["default"] else ""
        strategy = ", ".join(f"{k}={v}" for k, v in e["strategy"].items() if k != "name")
        print(f"\n{e['name']}{mark}: {e['description']}")
        print(f"  strategy: {e['strategy']['name']}" + (f" ({strategy})" if strategy else ""))
        for m in e["members"]:
            print(f"  member  {m['name']}: {m['backend']} {m['model'] or ''}")
        for s in e["scorers"]:
            print(f"  scorer  {s['type']} on {s['member'] or s['model']} (weight {s['weight']})")
    print("\navailable strategies: " + ", ".join(sorted(STRATEGIES)))
    print("available backends:   " + ", ".join(sorted(BACKENDS)))
    print("available scorers:    " + ", ".join(sorted(SCORERS)))
    return 0


def _cmd_folder(args: argparse.Namespace) -> int:
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.models.loader import model_folder

    print(model_folder(ModelSpec(source=args.source)))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from ensemblehub_integrations.server import serve
    except ImportError as exc:
        raise EnsembleHubError(
            f"the server needs extra packages ({exc.name}): pip install 'ensemblehub[server]'"
        ) from exc
    keys = [args.api_key] if args.api_key else []
    if args.api_key_file:
        try:
            text = open(args.api_key_file, encoding="utf-8").read()  # noqa: SIM115 - read in one go
        except OSError as exc:
            raise EnsembleHubError(f"cannot read --api-key-file {args.api_key_file}: {exc.strerror or exc}") from None
        keys += [line.strip() for line in text.splitlines() if line.strip()]
        if not keys:
            raise EnsembleHubError(f"--api-key-file {args.api_key_file} holds no key; write one key per line")
    serve(config=args.config, host=args.host, port=args.port, api_key=",".join(keys) or None,
          ui=False if args.no_ui else None)
    return 0


_COMMANDS = {"ask": _cmd_ask, "run": _cmd_run, "calibrate": _cmd_calibrate, "models": _cmd_models,
             "folder": _cmd_folder, "serve": _cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ensemblehub`` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return _COMMANDS[args.command](args)
    except EnsembleHubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; finished examples are saved (rerun with --resume to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""lm-evaluation-harness runs its OpenAI-compatible model types against a served ensemble.

The task is examples/lm_eval/ensemblehub_capitals.yaml (20 questions in a JSONL file in the repo; hub datasets
are out of reach here). The first test serves a fake ensemble that knows 5 of the 20 capitals, so the score
must be exactly 0.25. The others serve SmolLM2-135M for real: a generation task through chat completions and
a multiple-choice task scored by log-likelihood through completions; each prints its score.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ensemblehub_core.config import parse_config
from ensemblehub_integrations.server import create_app
from tests.server.conftest import running

ROOT = Path(__file__).resolve().parents[2]
TASK_DIR = ROOT / "examples" / "lm_eval"

if importlib.util.find_spec("lm_eval") is None:
    pytest.skip("lm-eval is not installed, so the lm_eval run is NOT tested: pip install 'ensemblehub[dev]' "
                "(or pip install lm-eval)", allow_module_level=True)


def _task_dir(tmp: Path) -> Path:
    """The shipped tasks with their data path made absolute, so lm_eval can run from any directory."""
    out = tmp / "tasks"
    out.mkdir()
    for task in TASK_DIR.glob("*.yaml"):
        text = task.read_text(encoding="utf-8")
        text = text.replace("examples/lm_eval/capitals.jsonl", str(TASK_DIR / "capitals.jsonl"))
        (out / task.name).write_text(text, encoding="utf-8")
    return out


def run_lm_eval(tmp: Path, model_type: str, model_args: str, *extra: str,
                task: str = "ensemblehub_capitals") -> dict[str, Any]:
    """Run the ``lm_eval`` command and return the task's results."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp / "hf-datasets"), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", model_type, "--model_args", model_args,
           "--tasks", task, "--include_path", str(_task_dir(tmp)), "--output_path", str(tmp / "out"), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results_file,) = list((tmp / "out").rglob("results_*.json"))
    results: dict[str, Any] = json.loads(results_file.read_text())["results"][task]
    return results


def test_lm_eval_local_completions_against_the_server(tmp_path: Path) -> None:
    cfg = parse_config({"ensembles": {"capitals": {
        "members": [{"name": "c", "backend": "function", "options": {"fn": "tests.server.fakes:capital"}}],
        "strategy": "single",
    }}})
    with running(create_app(cfg, api_key="")) as served:
        args = (f"model=capitals,base_url={served.url}/v1/completions,tokenizer_backend=none,"
                "num_concurrent=2,max_retries=1")
        # batch_size 4: lm_eval sends lists of prompts, which /v1/completions answers choice by choice.
        results = run_lm_eval(tmp_path, "local-completions", args, "--batch_size", "4")
    assert results["exact_match,last-capitalised-word"] == pytest.approx(0.25)


@pytest.mark.slow
def test_lm_eval_chat_completions_with_a_real_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_config({"ensembles": {"smollm2-135m": {
        "members": [{"name": "smol", "model": "embedded:smollm2-135m-instruct"}], "strategy": "single",
    }}})
    app = create_app(cfg, api_key="")
    with running(app, wait_ready=False) as served:
        from tests.server.conftest import wait_until_ready

        try:
            wait_until_ready(served.url, timeout=300)
        except RuntimeError as exc:
            pytest.skip(f"the embedded SmolLM2 model cannot load here: {exc}")
        args = f"model=smollm2-135m,base_url={served.url}/v1/chat/completions,num_concurrent=4,max_retries=1"
        results = run_lm_eval(tmp_path, "local-chat-completions", args, "--apply_chat_template", "--limit", "5")
        batches = app.state.server.runners["smollm2-135m"].batches
    score = results["exact_match,last-capitalised-word"]
    with capsys.disabled():
        print(f"\nlm_eval: SmolLM2-135M on ensemblehub_capitals (5 questions): exact_match {score:.2f}; "
              f"batches {batches}")
    assert score >= 0.4  # it knows Paris, Rome, Berlin, Madrid, Tokyo (the first five)


@pytest.mark.slow
def test_lm_eval_multiple_choice_loglikelihood_with_a_real_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # local-completions sends token ids with echo + logprobs + max_tokens 1 and sums the continuation's scores.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.models.loader import model_folder

    folder = model_folder(ModelSpec(source="embedded:smollm2-135m-instruct"))
    cfg = parse_config({"ensembles": {"smollm2-135m": {
        "members": [{"name": "smol", "model": "embedded:smollm2-135m-instruct", "dtype": "float32"}],
        "strategy": "single",
    }}})
    with running(create_app(cfg, api_key=""), wait_ready=False) as served:
        from tests.server.conftest import wait_until_ready

        try:
            wait_until_ready(served.url, timeout=300)
        except RuntimeError as exc:
            pytest.skip(f"the embedded SmolLM2 model cannot load here: {exc}")
        args = (f"model=smollm2-135m,base_url={served.url}/v1/completions,tokenizer_backend=huggingface,"
                f"tokenizer={folder},num_concurrent=2,max_retries=1")
        results = run_lm_eval(tmp_path, "local-completions", args, "--limit", "6", "--log_samples",
                              task="ensemblehub_capitals_mc")
    with capsys.disabled():
        print(f"\nlm_eval: SmolLM2-135M on ensemblehub_capitals_mc (6 questions): acc {results['acc,none']:.2f}")
    assert results["acc,none"] >= 0.8  # it knows these capitals; wrong scores would put it near 0.25

    # Each score lm_eval saw equals the model's own log-likelihood of that continuation, computed here.
    (samples_file,) = list((tmp_path / "out").rglob("samples_ensemblehub_capitals_mc_*.jsonl"))
    sample = json.loads(samples_file.read_text().splitlines()[0])
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    import torch

    context = sample["arguments"]["gen_args_0"]["arg_0"]
    for k, choice in enumerate(sample["doc"]["options"]):
        whole = tok(context + " " + choice).input_ids
        n_ctx = len(tok(context).input_ids)
        with torch.inference_mode():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        mine = sum(float(logp[i - 1, whole[i]]) for i in range(n_ctx, len(whole)))
        theirs = float(sample["resps"][k][0][0])
        assert abs(mine - theirs) < 1e-3, (choice, mine, theirs)

"""The `NemoBackend` facade against the emulator: the flywheel's sequence (upload, customize,
deploy, chat, evaluate, tear down) under injected faults, resumption without duplicate
jobs, cancellation without leftovers, remote failures and malformed answers."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from dagster import DagsterExecutionInterruptedError
from nemo_emulator import Fault, nemo_emulator

from flywheel_assets.core.chat import ChatPrompt
from flywheel_assets.core.hyperparameters import LoraHyperparameters
from resources.nemo import (
    EVAL_FILE,
    NemoBackend,
    NemoError,
    NemoJobFailed,
    NemoSchemaError,
    NemoTimeoutError,
    split_files,
)
from resources.nemo.transport import Progress

KEY = "nvapi-backend-key-7"
BASE = "meta/llama-3.2-1b-instruct"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
FAST_CHAT = {"max_retries": 8, "backoff_s": 0.001, "timeout_s": 2.0, "max_concurrency": 2}


def record(i: int) -> dict:
    text = f"get_weather for city {i}"
    return {
        "record_id": str(i),
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": text},
            {
                "role": "assistant",
                "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"text": text}}}],
            },
        ],
    }


def jsonl(records) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()


FILES = split_files(
    train=jsonl(record(i) for i in range(8)),
    validation=jsonl([record(8)]),
    evaluation=jsonl(record(i) for i in range(10, 14)),
)
HP = LoraHyperparameters(epochs=2, batch_size=4, learning_rate=1e-4, adapter_dim=8, adapter_dropout=0.05)


@pytest.fixture
def emu():
    with nemo_emulator(api_key=KEY) as running:
        yield running


def backend(emu, **overrides) -> NemoBackend:
    options = dict(
        nemo_base_url=emu.nemo_base_url,
        datastore_base_url=emu.datastore_base_url,
        nim_base_url=emu.nim_base_url,
        api_key=KEY,
        poll_interval_s=0.001,
        backoff_s=0.001,
        max_backoff_s=0.005,
        max_retries=8,
        request_timeout_s=2.0,
    )
    return NemoBackend(**{**options, **overrides})


def prompts(n: int = 6) -> list[ChatPrompt]:
    return [
        ChatPrompt(messages=[{"role": "user", "content": f"get_weather in town {i}"}], tools=[WEATHER])
        for i in range(n)
    ]


# ------------------------------------------------------------------------ the sequence


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_full_sequence_under_20_percent_faults_creates_one_job_and_leaves_nothing(emu, seed):
    nemo = backend(emu)
    emu.set_fault_rate(0.2, seed=seed)
    job_ids, events = [], []
    dataset = nemo.upload_splits("weather-bot", FILES)
    result = nemo.customize(BASE, dataset, HP, on_job_id=job_ids.append, on_progress=events.append)
    # one chat worker: requests arrive in a fixed order, so each seed injects the same faults
    with nemo.deployment(BASE, served_model=result.output_model, **{**FAST_CHAT, "max_concurrency": 1}) as chat:
        completions = chat.complete(prompts())
        scores = nemo.evaluate(result.output_model, dataset, "tool_calling", eval_file=EVAL_FILE)
    # rerun of the step with the recorded id: resumes, creates nothing
    again = nemo.customize(BASE, dataset, HP, existing_job_id=job_ids[0])
    emu.set_fault_rate(0.0)

    assert len(emu.customization_jobs) == 1 and job_ids == [emu.customization_jobs[0].id]
    assert result.status == "completed" and not result.resumed
    assert again.resumed and again.job_id == result.job_id and again.output_model == result.output_model
    assert all(c.error is None for c in completions), [c.error for c in completions]
    assert [c.message.tool_calls[0].function.name for c in completions] == ["get_weather"] * 6
    assert scores.scores["function_name_accuracy"] == 1.0 and len(emu.evaluation_jobs) == 1
    assert emu.deployments_alive == []
    assert emu.datasets[f"dfwbp/{dataset}"]["files_url"] == f"hf://datasets/dfwbp/{dataset}"
    faults = [r.outcome for r in emu.requests if r.outcome != "ok"]
    assert len(faults) >= 5 and {"drop", "drop_after"} & set(faults)  # the faults were real
    assert any(isinstance(e, Progress) and e.status == "completed" for e in events)


def test_rerun_without_the_job_id_finds_the_job_by_name(emu):
    nemo = backend(emu)
    dataset = nemo.upload_splits("weather-bot", FILES)
    first = nemo.customize(BASE, dataset, HP)
    second = nemo.customize(BASE, dataset, HP)  # e.g. the id was never recorded
    assert second.resumed and second.job_id == first.job_id and len(emu.customization_jobs) == 1
    other = nemo.customize(BASE, dataset, HP.model_copy(update={"epochs": 3}))
    assert not other.resumed and len(emu.customization_jobs) == 2  # different inputs: a new job


def test_lost_create_answer_is_recovered_not_repeated(emu):
    nemo = backend(emu)
    dataset = nemo.upload_splits("weather-bot", FILES)
    emu.add_fault(Fault.drop_after(), method="POST", path=r"^/v1/customization/jobs$", times=3)
    ids = []
    result = nemo.customize(BASE, dataset, HP, on_job_id=ids.append)
    assert len(emu.customization_jobs) == 1 and ids == [result.job_id]


def test_upload_is_content_addressed_and_repeatable(emu):
    nemo = backend(emu)
    name = nemo.upload_splits("weather-bot", FILES)
    assert nemo.upload_splits("weather-bot", FILES) == name
    assert emu.commits[f"dfwbp/{name}"] == 1  # second upload sent no files
    changed = nemo.upload_splits("weather-bot", {**FILES, "training/training.jsonl": jsonl([record(99)])})
    assert changed != name and changed.startswith("flywheel-weather-bot-")
    assert set(emu.repos[f"dfwbp/{name}"]) == {
        "training/training.jsonl",
        "validation/validation.jsonl",
        "testing/testing.jsonl",
    }


# --------------------------------------------------------------------------- resumption


def test_resume_after_a_deadline_continues_the_same_job(emu):
    emu.customization_polls = 30
    nemo = backend(emu, customization_timeout_s=0.02, poll_interval_s=0.005)
    dataset = nemo.upload_splits("weather-bot", FILES)
    ids = []
    with pytest.raises(NemoTimeoutError) as caught:
        nemo.customize(BASE, dataset, HP, on_job_id=ids.append)
    assert f"existing_job_id='{ids[0]}'" in str(caught.value)
    # a deadline does not cancel the job (how far it got in 0.02 s depends on the machine)
    assert emu.customization_jobs[0].status in ("pending", "running")
    done = backend(emu).customize(BASE, dataset, HP, existing_job_id=ids[0])
    assert done.resumed and done.job_id == ids[0] and done.status == "completed"
    assert len(emu.customization_jobs) == 1


def test_existing_job_id_of_a_failed_or_unknown_job_starts_a_new_one(emu):
    nemo = backend(emu)
    dataset = nemo.upload_splits("weather-bot", FILES)
    emu.fail_next_customization("NCCL timeout")
    ids, events = [], []
    with pytest.raises(NemoJobFailed, match="NCCL timeout"):
        nemo.customize(BASE, dataset, HP, on_job_id=ids.append)
    retried = nemo.customize(BASE, dataset, HP, existing_job_id=ids[0], on_progress=events.append)
    assert not retried.resumed and retried.job_id != ids[0] and len(emu.customization_jobs) == 2
    assert any(e.status == "failed" and e.message == "starting a new job" for e in events)
    assert backend(emu).customize(BASE, dataset, HP, existing_job_id="cust-gone").job_id == retried.job_id


# ------------------------------------------------------------------------- cancellation


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, DagsterExecutionInterruptedError])
def test_interrupting_customization_cancels_the_remote_job(emu, interrupt):
    nemo = backend(emu)
    dataset = nemo.upload_splits("weather-bot", FILES)

    def on_progress(progress):
        if progress.status == "running":
            raise interrupt()

    with pytest.raises(interrupt) as caught:
        nemo.customize(BASE, dataset, HP, on_progress=on_progress)
    [job] = emu.customization_jobs
    assert job.status == "cancelled"
    assert f"cancelled customization job {job.id}" in caught.value.__notes__


def test_an_ordinary_error_in_a_callback_leaves_the_job_running(emu):
    nemo = backend(emu)
    dataset = nemo.upload_splits("weather-bot", FILES)

    def on_progress(progress):
        if progress.status == "running":
            raise RuntimeError("log sink broke")

    with pytest.raises(RuntimeError):
        nemo.customize(BASE, dataset, HP, on_progress=on_progress)
    assert emu.customization_jobs[0].status == "running"


@pytest.mark.parametrize(
    "error", [RuntimeError("scoring crashed"), KeyboardInterrupt(), DagsterExecutionInterruptedError()]
)
def test_deployment_block_that_fails_or_is_cancelled_leaves_no_deployment(emu, error):
    nemo = backend(emu)
    emu.set_fault_rate(0.2, seed=7)
    with pytest.raises(type(error)):
        with nemo.deployment(BASE, **FAST_CHAT) as chat:
            chat.complete(prompts(2))
            assert emu.deployments_alive == ["dfwbp/meta-llama-3-2-1b-instruct"]
            raise error
    emu.set_fault_rate(0.0)
    assert emu.deployments_alive == []
    assert emu.deployment_events == [
        ("created", "dfwbp/meta-llama-3-2-1b-instruct"),
        ("deleted", "dfwbp/meta-llama-3-2-1b-instruct"),
    ]


def test_cancel_while_waiting_for_the_adapter_to_sync_leaves_no_deployment(emu):
    nemo = backend(emu)
    emu.sync_polls = 1000

    def on_progress(progress):
        if progress.service == "NIM proxy":
            raise DagsterExecutionInterruptedError()

    with pytest.raises(DagsterExecutionInterruptedError):
        with nemo.deployment(BASE, served_model="dfwbp/adapter@cust-1", on_progress=on_progress):
            pass
    assert emu.deployments_alive == []


# ----------------------------------------------------------------------- remote failures


def test_failed_customization_surfaces_the_status_logs_detail(emu):
    nemo = backend(emu)
    dataset = nemo.upload_splits("weather-bot", FILES)
    emu.fail_next_customization("Training data has 0 valid rows: 'messages' must end with an assistant turn")
    with pytest.raises(NemoJobFailed) as caught:
        nemo.customize(BASE, dataset, HP)
    assert "Customizer: job cust-" in str(caught.value)
    assert "failed: Training data has 0 valid rows: 'messages' must end with an assistant turn" in str(caught.value)


def test_missing_required_field_is_a_clear_error(emu):
    nemo = backend(emu)
    dataset = nemo.upload_splits("weather-bot", FILES)
    emu.add_fault(Fault.body({"status": "created"}), method="POST", path=r"^/v1/customization/jobs$")
    with pytest.raises(NemoSchemaError) as caught:
        nemo.customize(BASE, dataset, HP)
    assert str(caught.value) == (
        "Customizer: unexpected response to POST /v1/customization/jobs: "
        "required field 'id' is missing; required field 'output_model' is missing"
    )


def test_chat_evaluation_through_the_evaluator_needs_a_judge(emu):
    with pytest.raises(ValueError, match="needs a judge"):
        backend(emu).evaluate(BASE, "ds", "chat", eval_file=EVAL_FILE)


# ------------------------------------------------------------------------ configuration


def test_hyperparameters_sent_and_those_the_customizer_does_not_take(emu):
    nemo = backend(emu)
    dataset = nemo.upload_splits("weather-bot", FILES)
    hp = HP.model_copy(update={"max_seq_length": 2048, "warmup_ratio": 0.1, "seed": 5})
    result = nemo.customize(BASE, dataset, hp, target=f"{BASE}@2.0")
    sent = emu.customization_jobs[0].hyperparameters
    assert sent == {
        "training_type": "sft",
        "finetuning_type": "lora",
        "epochs": 2,
        "batch_size": 4,
        "learning_rate": 1e-4,
        "lora": {"adapter_dim": 8, "adapter_dropout": 0.05},
    }
    assert result.ignored_hyperparameters == {"warmup_ratio": 0.1, "seed": 5}
    [config] = emu.configs.values()
    assert config["target"] == f"{BASE}@2.0" and config["max_seq_length"] == 2048
    assert result.train_loss and result.epochs_completed == 2


def test_the_target_is_the_clusters_versioned_target_of_the_base_model(emu):
    nemo = backend(emu)
    dataset = nemo.upload_splits("weather-bot", FILES)
    nemo.customize(BASE, dataset, HP)  # no customizer_target: found among the cluster's targets
    [config] = emu.configs.values()
    assert config["target"] == f"{BASE}@2.0"


@pytest.mark.parametrize(
    "base, target, problem",
    [
        (BASE, BASE, r"target 'meta/llama-3.2-1b-instruct' does not exist"),
        (BASE, "meta/llama-3.3-70b-instruct@2.0", r"target 'meta/llama-3.3-70b-instruct@2.0' is disabled"),
        ("acme/unknown-7b", None, r"no enabled target fine-tunes 'acme/unknown-7b'"),
    ],
)
def test_an_unknown_target_fails_before_any_config_and_names_the_available_ones(emu, base, target, problem):
    nemo = backend(emu)
    dataset = nemo.upload_splits("weather-bot", FILES)
    with pytest.raises(
        NemoError,
        match=problem + r"\. Enabled targets: meta/llama-3.1-8b-instruct@2.0, "
        r"meta/llama-3.2-1b-instruct@2.0\. Set the candidate's customizer_target",
    ):
        nemo.customize(base, dataset, HP, target=target)
    assert emu.configs == {} and emu.customization_jobs == []


def test_several_targets_of_one_base_model_need_a_choice(emu):
    emu.targets["meta/llama-3.2-1b-instruct@3.0"] = {**emu.targets[f"{BASE}@2.0"], "name": "llama-3.2-1b-instruct@3.0"}
    nemo = backend(emu)
    dataset = nemo.upload_splits("weather-bot", FILES)
    with pytest.raises(NemoError, match=r"several targets fine-tune .*@2\.0, .*@3\.0\)"):
        nemo.customize(BASE, dataset, HP)
    assert nemo.customize(BASE, dataset, HP, target=f"{BASE}@3.0").status == "completed"


def test_uploaded_splits_are_in_the_formats_the_services_read(emu):
    nemo = backend(emu)
    dataset = nemo.upload_splits("weather-bot", FILES)
    repo = emu.repos[f"dfwbp/{dataset}"]
    training = [json.loads(line) for line in repo["training/training.jsonl"].splitlines()]
    assert all(set(line) == {"messages", "tools"} for line in training)
    assert all(line["messages"][-1]["content"] == "" for line in training)  # tool-call turns: content ""
    assert "record_id" in json.loads(repo["testing/testing.jsonl"].splitlines()[0])  # the Evaluator's file is ours


def test_evaluate_names_its_file_and_reaches_the_nim_at_the_evaluators_address(emu):
    nemo = backend(emu, evaluator_nim_url=emu.cluster_nim_url)
    with pytest.raises(TypeError, match="eval_file"):  # no default: the flywheel's uploads carry no eval file
        nemo.evaluate(BASE, "ds", "tool_calling")
    dataset = nemo.upload_splits("weather-bot", FILES)
    with nemo.deployment(BASE, **FAST_CHAT):
        scores = nemo.evaluate(BASE, dataset, "tool_calling", eval_file=EVAL_FILE)
    assert scores.scores["function_name_accuracy"] == 1.0
    [job] = emu.evaluation_jobs
    assert job.target["model"]["api_endpoint"]["url"] == f"{emu.cluster_nim_url}/v1/chat/completions"


def test_resource_reads_its_key_from_an_env_var(emu, monkeypatch):
    monkeypatch.setenv("NEMO_TEST_API_KEY", KEY)
    resource = NemoBackend(
        nemo_base_url=emu.nemo_base_url,
        datastore_base_url=emu.datastore_base_url,
        nim_base_url=emu.nim_base_url,
        api_key=dg.EnvVar("NEMO_TEST_API_KEY"),
        backoff_s=0.001,
        max_retries=1,
    )
    with dg.build_resources({"nemo": resource}) as resources:
        assert resources.nemo.upload_splits("weather-bot", FILES).startswith("flywheel-weather-bot-")
    assert all(r.authorization == f"Bearer {KEY}" for r in emu.requests if r.method != "PUT")

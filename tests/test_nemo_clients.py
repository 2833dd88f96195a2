"""Each NeMo client against the in-process emulator (tests/nemo_emulator.py)."""

from __future__ import annotations

import json

import pytest
from dagster import DagsterExecutionInterruptedError
from nemo_emulator import Fault, nemo_emulator

from resources.nemo.customizer import (
    CustomizationConfigRequest,
    CustomizationJobRequest,
    CustomizerClient,
    DatasetRef,
    Hyperparameters,
    LoraParameters,
)
from resources.nemo.datastore import DataStoreClient
from resources.nemo.deployment import (
    DeploymentClient,
    DeploymentConfig,
    ModelDeploymentRequest,
    NimDeploymentConfig,
    nim_deployment,
)
from resources.nemo.entity_store import EntityStoreClient
from resources.nemo.evaluator import (
    EvaluatorClient,
    JudgeEndpoint,
    chat_judge_config,
    model_target,
    tool_calling_config,
)
from resources.nemo.formats import customizer_jsonl, evaluator_jsonl
from resources.nemo.nim import NimProxyClient
from resources.nemo.transport import (
    NemoError,
    NemoHTTPError,
    NemoJobFailed,
    NemoSchemaError,
    NemoTimeoutError,
    RetryPolicy,
)

KEY = "nvapi-test-key-42"
NS = "dfwbp"
BASE = "meta/llama-3.2-1b-instruct"
FAST = RetryPolicy(max_retries=6, backoff_s=0.001, max_backoff_s=0.005)
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


@pytest.fixture
def emu():
    with nemo_emulator(api_key=KEY) as running:
        yield running


def client(cls, emu, **kwargs):
    url = {DataStoreClient: emu.datastore_base_url, NimProxyClient: emu.nim_base_url}.get(cls, emu.nemo_base_url)
    return cls(url, api_key=KEY, retry=FAST, timeout_s=2, **kwargs)


def record(i: int, text: str, tool: str | None = "get_weather", args: dict | None = None) -> dict:
    answer = (
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": tool, "arguments": args if args is not None else {"text": text}},
                }
            ],
        }
        if tool
        else {"role": "assistant", "content": text}
    )
    return {
        "record_id": str(i),
        "messages": [{"role": "user", "content": text}, answer],
        **({"tools": [WEATHER, TIME]} if tool else {}),
    }


def jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def make_dataset(emu, name="ds", files=None) -> None:
    files = files or {"training/training.jsonl": customizer_jsonl(jsonl([record(0, "weather in Paris")]))}
    with client(EntityStoreClient, emu) as entities, client(DataStoreClient, emu) as store:
        entities.create_namespace(NS)
        store.create_namespace(NS)
        store.create_repo(NS, name)
        store.upload_files(NS, name, files)
        entities.register_dataset(NS, name, store.files_url(NS, name))


def start_job(emu, customizer, name="job-a", dataset="ds") -> str:
    config = customizer.ensure_config(CustomizationConfigRequest(name="cfg", namespace=NS, target=f"{BASE}@2.0"))
    job = customizer.create_job(
        CustomizationJobRequest(
            name=name,
            output_model=f"{NS}/{name}",
            config=config,
            dataset=DatasetRef(name=dataset, namespace=NS),
            hyperparameters=Hyperparameters(
                epochs=2, batch_size=16, learning_rate=1e-4, lora=LoraParameters(adapter_dim=32, adapter_dropout=0.1)
            ),
        )
    )
    return job.id


def deployment_request(name="nim-a", model=BASE) -> ModelDeploymentRequest:
    return ModelDeploymentRequest(
        name=name,
        namespace=NS,
        config=DeploymentConfig(
            model=model, nim_deployment=NimDeploymentConfig(image_name=f"nvcr.io/nim/{model}", image_tag="1.8", gpu=1)
        ),
    )


# ---------------------------------------------------------------------------- Data Store


def test_datastore_namespace_repo_upload_and_download(emu):
    with client(DataStoreClient, emu) as store:
        with pytest.raises(
            NemoHTTPError,
            match=r"Data Store: POST .*/v1/hf/api/repos/create answered HTTP 404: namespace dfwbp not found",
        ):
            store.create_repo(NS, "ds")
        assert store.create_namespace(NS) is True
        assert store.create_namespace(NS) is False
        assert store.create_repo(NS, "ds") is True
        assert store.create_repo(NS, "ds") is False
        files = {"training/training.jsonl": b'{"a": 1}\n', "testing/testing.jsonl": b'{"b": 2}\n'}
        assert sorted(store.upload_files(NS, "ds", files)) == sorted(files)
        assert store.download_file(NS, "ds", "testing/testing.jsonl") == b'{"b": 2}\n'
        assert store.upload_files(NS, "ds", files) == []  # unchanged: nothing sent
        assert emu.commits[f"{NS}/ds"] == 1
        assert store.upload_files(NS, "ds", {**files, "testing/testing.jsonl": b"{}\n"}) == ["testing/testing.jsonl"]
        assert emu.commits[f"{NS}/ds"] == 2
        assert store.delete_repo(NS, "ds") is True and store.delete_repo(NS, "ds") is False
    assert all(r.authorization == f"Bearer {KEY}" for r in emu.requests)


def test_datastore_large_files_go_through_lfs_without_our_key(emu):
    emu.lfs_threshold = 64
    big = b"x" * 1000
    with client(DataStoreClient, emu) as store:
        store.create_namespace(NS)
        store.create_repo(NS, "ds")
        assert store.upload_files(NS, "ds", {"training/big.jsonl": big, "training/small.jsonl": b"{}\n"})
        assert emu.lfs_paths[f"{NS}/ds"] == {"training/big.jsonl"}
        assert store.download_file(NS, "ds", "training/big.jsonl") == big
        assert store.upload_files(NS, "ds", {"training/big.jsonl": big}) == []  # sha256 matches: skipped
    puts = [r for r in emu.requests if r.method == "PUT"]
    assert len(puts) == 1 and puts[0].authorization is None  # the presigned upload carries only its signature
    verify = next(r for r in emu.requests if r.path.endswith("/verify"))
    assert verify.authorization == f"Bearer {KEY}"


def test_datastore_rejects_unsafe_paths(emu):
    with client(DataStoreClient, emu) as store, pytest.raises(ValueError, match="invalid file path"):
        store.upload_files(NS, "ds", {"../escape.jsonl": b"x"})


def test_wrong_api_key_fails_fast_without_leaking_it(emu):
    with DataStoreClient(emu.datastore_base_url, api_key="wrong-key-123", retry=FAST) as store:
        with pytest.raises(NemoHTTPError) as caught:
            store.create_namespace(NS)
    assert caught.value.status_code == 401 and "wrong-key-123" not in str(caught.value)
    assert len(emu.requests) == 1  # 401 is not retried


# -------------------------------------------------------------------------- Entity Store


def test_entity_store_namespaces_datasets_models(emu):
    with client(EntityStoreClient, emu) as entities:
        assert entities.create_namespace(NS) is True and entities.create_namespace(NS) is False
        assert entities.get_dataset(NS, "ds") is None
        first = entities.register_dataset(NS, "ds", "hf://datasets/dfwbp/ds", description="v1")
        again = entities.register_dataset(NS, "ds", "hf://datasets/dfwbp/ds", description="v2")
        assert first.files_url == again.files_url == "hf://datasets/dfwbp/ds"
        assert entities.get_dataset(NS, "ds").description == "v2"
        assert entities.get_model(f"{NS}/nothing@v1") is None
        assert entities.delete_dataset(NS, "ds") is True and entities.delete_dataset(NS, "ds") is False


# ---------------------------------------------------------------------------- Customizer


def test_customizer_job_runs_to_completion_with_progress_and_registers_the_model(emu):
    make_dataset(emu)
    events = []
    with client(CustomizerClient, emu) as customizer, client(EntityStoreClient, emu) as entities:
        job_id = start_job(emu, customizer)
        status = customizer.wait(job_id, timeout_s=5, interval_s=0, on_progress=events.append)
        job = customizer.get_job(job_id)
        assert entities.get_model(job.output_model).name == job.output_model.split("/", 1)[1]
    assert status.state == "completed" and status.epochs_completed == 2 and status.loss_curve()
    assert job.output_model == f"{NS}/job-a@{job_id}"  # the service's name, not the one asked for
    assert [e.status for e in events] == ["pending", "running", "running", "running", "completed"]
    percents = [e.percent for e in events]
    assert percents == sorted(percents) and percents[-1] == 100


def test_customizer_config_is_created_once(emu):
    with client(CustomizerClient, emu) as customizer:
        request = CustomizationConfigRequest(name="cfg", namespace=NS, target=f"{BASE}@2.0", max_seq_length=2048)
        assert customizer.ensure_config(request) == customizer.ensure_config(request) == f"{NS}/cfg"
    assert emu.configs[f"{NS}/cfg"]["training_options"][0]["finetuning_type"] == "lora"


def test_customizer_targets_carry_a_version_and_configs_need_a_known_enabled_one(emu):
    with client(CustomizerClient, emu) as customizer:
        targets = {t.ref: t for t in customizer.list_targets(page_size=2)}  # two pages
        assert targets[f"{BASE}@2.0"].base_model == BASE and targets[f"{BASE}@2.0"].enabled
        assert not targets["meta/llama-3.3-70b-instruct@2.0"].enabled
        for target, answer in [
            (BASE, "404: customization target meta/llama-3.2-1b-instruct not found"),
            ("meta/llama-3.3-70b-instruct@2.0", "422: .* is disabled"),
        ]:
            with pytest.raises(NemoHTTPError, match=answer):
                customizer.ensure_config(CustomizationConfigRequest(name="cfg", namespace=NS, target=target))
    assert emu.configs == {}


@pytest.mark.parametrize(
    "line, problem",
    [
        (
            {"record_id": "7", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            r"line 2: unexpected field\(s\) \['record_id'\]",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}],
                    },
                ]
            },
            r"line 2: messages\[1\]\.content must be a string .*got 'no content'",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]},
            r"line 2: messages\[1\]\.content must be a string .*got None",
        ),
        (
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
            "line 2: the last message must be the assistant's",
        ),
    ],
)
def test_customizer_validates_every_training_line_and_fails_the_job_with_the_line(emu, line, problem):
    good = {
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
            },
        ],
        "tools": [WEATHER],
    }
    make_dataset(emu, files={"training/training.jsonl": jsonl([good, line])})
    with client(CustomizerClient, emu) as customizer:
        job_id = start_job(emu, customizer)
        with pytest.raises(NemoJobFailed, match=f"Dataset validation failed: training/training.jsonl {problem}"):
            customizer.wait(job_id, timeout_s=5, interval_s=0)


def test_customizer_format_has_only_messages_and_tools_and_string_content():
    lines = [record(0, "weather in Paris"), record(1, "hello", tool=None)]
    lines[1]["messages"].insert(0, {"role": "assistant", "content": "earlier", "refusal": None})
    converted = [json.loads(line) for line in customizer_jsonl(jsonl(lines)).splitlines()]
    assert [sorted(line) for line in converted] == [["messages", "tools"], ["messages"]]
    assert converted[0]["messages"][-1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": lines[0]["messages"][-1]["tool_calls"],
    }
    assert converted[1]["messages"] == [{"role": "assistant", "content": "earlier"}, *lines[1]["messages"][1:]]
    assert customizer_jsonl(b"") == b""


def test_customizer_failed_job_carries_the_remote_detail(emu):
    make_dataset(emu)
    emu.fail_next_customization("CUDA out of memory: tried to allocate 2.00 GiB")
    with client(CustomizerClient, emu) as customizer:
        job_id = start_job(emu, customizer)
        with pytest.raises(NemoJobFailed) as caught:
            customizer.wait(job_id, timeout_s=5, interval_s=0)
    assert str(caught.value) == f"Customizer: job {job_id} failed: CUDA out of memory: tried to allocate 2.00 GiB"
    assert caught.value.detail == "CUDA out of memory: tried to allocate 2.00 GiB"


def test_customizer_cancel(emu):
    make_dataset(emu)
    with client(CustomizerClient, emu) as customizer:
        job_id = start_job(emu, customizer)
        assert customizer.cancel(job_id) is True
        assert customizer.cancel(job_id) is False  # already over: fine
        with pytest.raises(NemoJobFailed, match="cancelled"):
            customizer.wait(job_id, timeout_s=5, interval_s=0)


def test_customizer_create_answer_lost_after_processing_creates_one_job(emu):
    make_dataset(emu)
    emu.add_fault(Fault.drop_after(), method="POST", path=r"^/v1/customization/jobs$", times=2)
    with client(CustomizerClient, emu) as customizer:
        job_id = start_job(emu, customizer, name="job-once")
    assert [j.id for j in emu.customization_jobs_named("job-once")] == [job_id]


def test_customizer_rejects_a_job_on_an_unknown_dataset(emu):
    make_dataset(emu)
    with client(CustomizerClient, emu) as customizer:
        with pytest.raises(NemoHTTPError, match="dataset dfwbp/missing not found"):
            start_job(emu, customizer, dataset="missing")


def test_customizer_lists_pages_and_finds_by_name(emu):
    make_dataset(emu)
    with client(CustomizerClient, emu) as customizer:
        ids = [start_job(emu, customizer, name=f"job-{i}") for i in range(5)]
        listed = [job.id for job in customizer.list_jobs(page_size=2)]
        assert listed == ids[::-1]
        assert customizer.find_job("job-1").id == ids[1]
        customizer.cancel(ids[2])
        assert customizer.find_job("job-2") is None  # cancelled jobs are not reused
        assert customizer.get_job("cust-nope") is None


def test_customizer_status_without_status_field_is_a_clear_error(emu):
    emu.add_fault(Fault.body({"percentage_done": 10, "status_logs": []}), path="/status$")
    with client(CustomizerClient, emu) as customizer, pytest.raises(NemoSchemaError) as caught:
        customizer.wait("cust-1", timeout_s=1, interval_s=0)
    assert str(caught.value) == (
        "Customizer: unexpected response to GET /v1/customization/jobs/cust-1/status: "
        "required field 'status' is missing"
    )


def test_customizer_wait_has_a_deadline(emu):
    make_dataset(emu)
    emu.customization_polls = 10_000
    with client(CustomizerClient, emu) as customizer:
        job_id = start_job(emu, customizer)
        with pytest.raises(NemoTimeoutError, match=rf"resume it with existing_job_id='{job_id}'"):
            customizer.wait(job_id, timeout_s=0.05, interval_s=0.01)


# ----------------------------------------------------------------------------- Evaluator


def serve(emu, model=BASE):
    with client(DeploymentClient, emu) as deployments:
        deployments.create(deployment_request(model=model))
        deployments.wait_ready(NS, "nim-a", timeout_s=5, interval_s=0)


def test_evaluator_tool_calling_scores(emu):
    # the emulated NIM calls the tool named in the prompt with {"text": prompt}
    records = [
        record(0, "get_weather in Paris"),  # right name, right args
        record(1, "get_time in Rome", tool="get_time", args={"city": "Rome"}),  # right name, wrong args
        record(2, "what now", tool="get_time"),
    ]  # wrong name (NIM picks the first tool)
    make_dataset(
        emu, files={"training/t.jsonl": customizer_jsonl(jsonl(records)), "testing/testing.jsonl": jsonl(records)}
    )
    serve(emu)
    with client(EvaluatorClient, emu) as evaluator:
        config = tool_calling_config(
            "hf://datasets/dfwbp/ds/testing/testing.jsonl",
            judge=JudgeEndpoint(url="http://judge/v1/chat/completions", model_id="judge"),
        )
        job = evaluator.create_job(config, model_target(BASE), namespace=NS, request_key="k1")
        evaluator.wait(job.id, timeout_s=5, interval_s=0)
        scores = evaluator.results(job.id).flywheel_scores()
    assert scores["function_name_accuracy"] == pytest.approx(2 / 3)
    assert scores["function_name_and_args_accuracy"] == pytest.approx(1 / 3)
    assert set(scores) == {"function_name_accuracy", "function_name_and_args_accuracy", "correctness"}


def test_evaluator_chat_judge_similarity_is_scaled_to_unit_interval(emu):
    records = [record(0, "hello there", tool=None), record(1, "something", tool=None)]
    make_dataset(
        emu, files={"training/t.jsonl": customizer_jsonl(jsonl(records)), "testing/testing.jsonl": jsonl(records)}
    )
    serve(emu)
    with client(EvaluatorClient, emu) as evaluator:
        config = chat_judge_config(
            "hf://datasets/dfwbp/ds/testing/testing.jsonl",
            judge=JudgeEndpoint(url="http://judge/v1/chat/completions", model_id="judge"),
            limit=1,
        )
        job = evaluator.create_job(config, model_target(BASE), namespace=NS, request_key="k2")
        evaluator.wait(job.id, timeout_s=5, interval_s=0)
        results = evaluator.results(job.id)
    # "echo: hello there" vs "hello there": 2 of 3 words -> judge 7/10
    assert results.score("llm-judge", "similarity") == 7
    assert results.flywheel_scores() == {"similarity": pytest.approx(0.7)}


def test_evaluator_failed_job_surfaces_its_message(emu):
    emu.fail_next_evaluation("Judge endpoint unreachable: connection refused")
    with client(EvaluatorClient, emu) as evaluator:
        job = evaluator.create_job(
            tool_calling_config("hf://datasets/dfwbp/ds/testing/testing.jsonl"),
            model_target(BASE),
            namespace=NS,
            request_key="k3",
        )
        with pytest.raises(NemoJobFailed, match="Evaluator: job .* failed: Judge endpoint unreachable"):
            evaluator.wait(job.id, timeout_s=5, interval_s=0)


def test_evaluator_of_a_model_not_served_fails_with_the_reason(emu):
    make_dataset(
        emu, files={"training/t.jsonl": jsonl([record(0, "x")]), "testing/testing.jsonl": jsonl([record(0, "x")])}
    )
    with client(EvaluatorClient, emu) as evaluator:
        job = evaluator.create_job(
            tool_calling_config("hf://datasets/dfwbp/ds/testing/testing.jsonl"),
            model_target(BASE),
            namespace=NS,
            request_key="k4",
        )
        with pytest.raises(NemoJobFailed, match="is not served by the NIM proxy"):
            evaluator.wait(job.id, timeout_s=5, interval_s=0)
        assert evaluator.delete_job(job.id) is True and evaluator.delete_job(job.id) is False


def test_evaluator_inside_the_cluster_reaches_the_nim_at_its_cluster_address(emu):
    records = [record(0, "get_weather in Paris")]
    make_dataset(
        emu, files={"training/t.jsonl": customizer_jsonl(jsonl(records)), "testing/testing.jsonl": jsonl(records)}
    )
    serve(emu)
    config = tool_calling_config("hf://datasets/dfwbp/ds/testing/testing.jsonl")
    with client(EvaluatorClient, emu) as evaluator:
        # the flywheel's own NIM URL (loopback here, an ingress in a cluster) is not the Evaluator's
        job = evaluator.create_job(config, model_target(BASE, emu.nim_base_url), namespace=NS, request_key="outside")
        with pytest.raises(NemoJobFailed, match="cannot reach .* from inside the cluster"):
            evaluator.wait(job.id, timeout_s=5, interval_s=0)
        for target in (model_target(BASE, emu.cluster_nim_url), model_target(BASE)):
            assert target["model"] == BASE or target["model"]["api_endpoint"]["url"].startswith(emu.cluster_nim_url)
            job = evaluator.create_job(config, target, namespace=NS, request_key=json.dumps(target))
            assert evaluator.wait(job.id, timeout_s=5, interval_s=0).state == "completed"


def test_evaluator_replays_earlier_tool_calls_with_json_string_arguments(emu):
    earlier = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": {"city": "Rome"}}}
        ],
    }
    line = record(0, "get_weather in Paris")
    line["messages"][:0] = [
        {"role": "user", "content": "time in Rome?"},
        earlier,
        {"role": "tool", "tool_call_id": "c1", "content": "noon"},
    ]
    converted = json.loads(evaluator_jsonl(jsonl([line])))
    assert converted["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Rome"}'
    assert converted["messages"][-1] == line["messages"][-1]  # the ground truth keeps parsed arguments
    make_dataset(
        emu,
        files={
            "training/t.jsonl": customizer_jsonl(jsonl([line])),
            "testing/raw.jsonl": jsonl([line]),
            "testing/testing.jsonl": evaluator_jsonl(jsonl([line])),
        },
    )
    serve(emu)
    with client(EvaluatorClient, emu) as evaluator:
        raw = evaluator.create_job(
            tool_calling_config("hf://datasets/dfwbp/ds/testing/raw.jsonl"),
            model_target(BASE),
            namespace=NS,
            request_key="raw",
        )
        with pytest.raises(NemoJobFailed, match="HTTP 400 .*arguments: Input should be a valid string"):
            evaluator.wait(raw.id, timeout_s=5, interval_s=0)
        job = evaluator.create_job(
            tool_calling_config("hf://datasets/dfwbp/ds/testing/testing.jsonl"),
            model_target(BASE),
            namespace=NS,
            request_key="wire",
        )
        evaluator.wait(job.id, timeout_s=5, interval_s=0)
        assert evaluator.results(job.id).flywheel_scores()["function_name_and_args_accuracy"] == 1.0


def test_evaluator_create_answer_lost_creates_one_job(emu):
    emu.add_fault(Fault.drop_after(), method="POST", path=r"^/v1/evaluation/jobs$")
    with client(EvaluatorClient, emu) as evaluator:
        job = evaluator.create_job(
            tool_calling_config("hf://datasets/dfwbp/ds/t.jsonl"), model_target(BASE), namespace=NS, request_key="once"
        )
    assert [j.id for j in emu.evaluation_jobs] == [job.id]


# ------------------------------------------------------------------ Deployment Management


@pytest.mark.parametrize("exists_status", [409, 500])
def test_deployment_repeat_create_is_idempotent(emu, exists_status):
    emu.deployment_exists_status = exists_status
    with client(DeploymentClient, emu) as deployments:
        assert deployments.create(deployment_request()) is True
        assert deployments.create(deployment_request()) is False
        assert deployments.wait_ready(NS, "nim-a", timeout_s=5, interval_s=0).state == "ready"
        assert deployments.delete(NS, "nim-a") is True and deployments.delete(NS, "nim-a") is False
    assert emu.deployment_events == [("created", f"{NS}/nim-a"), ("deleted", f"{NS}/nim-a")]
    # "already exists" 500s were not retried: one create, one repeat
    assert sum(r.method == "POST" for r in emu.requests) == 2


def test_deployment_failure_surfaces_its_description(emu):
    emu.fail_next_deployment("ImagePullBackOff: nvcr.io/nim/meta/llama-3.2-1b-instruct:1.8 unauthorized")
    with client(DeploymentClient, emu) as deployments:
        deployments.create(deployment_request())
        with pytest.raises(NemoJobFailed, match="ImagePullBackOff"):
            deployments.wait_ready(NS, "nim-a", timeout_s=5, interval_s=0)


@pytest.mark.parametrize("status", ["cancelled", "unknown"])
def test_deployment_cancelled_or_unknown_ends_the_wait_at_once(emu, status):
    emu.fail_next_deployment(f"deployment {status}", status=status)
    with client(DeploymentClient, emu) as deployments:
        deployments.create(deployment_request())
        with pytest.raises(NemoJobFailed, match=f"deployment {NS}/nim-a {status}: deployment {status}"):
            deployments.wait_ready(NS, "nim-a", timeout_s=5, interval_s=0.001)
    gets = [r for r in emu.requests if r.method == "GET"]
    assert len(gets) == 1  # the first answer is the end state: no polling until the deadline


def run_deployment(emu, body, **kwargs):
    with client(DeploymentClient, emu) as deployments, client(NimProxyClient, emu) as nim:
        with nim_deployment(
            deployments, nim, deployment_request(), interval_s=0, ready_timeout_s=5, sync_timeout_s=5, **kwargs
        ) as model:
            body(model, nim)


def test_nim_deployment_serves_the_model_then_tears_down(emu):
    served = []

    def body(model, nim):
        served.append(model)
        [completion] = nim.chat_backend(model, max_retries=0).complete(
            [
                __import__("flywheel_assets.core.chat", fromlist=["ChatPrompt"]).ChatPrompt(
                    messages=[{"role": "user", "content": "get_weather in Oslo"}], tools=[WEATHER]
                )
            ]
        )
        assert completion.error is None and completion.message.tool_calls[0].function.arguments == {
            "text": "get_weather in Oslo"
        }
        assert emu.deployments_alive == [f"{NS}/nim-a"]

    run_deployment(emu, body)
    assert served == [BASE] and emu.deployments_alive == []


@pytest.mark.parametrize(
    "error", [RuntimeError("eval crashed"), KeyboardInterrupt(), DagsterExecutionInterruptedError()]
)
def test_nim_deployment_is_torn_down_when_the_block_fails_or_is_interrupted(emu, error):
    def body(model, nim):
        raise error

    with pytest.raises(type(error)):
        run_deployment(emu, body)
    assert emu.deployments_alive == []
    assert emu.deployment_events[-1] == ("deleted", f"{NS}/nim-a")


def test_nim_deployment_is_torn_down_when_interrupted_while_waiting(emu):
    emu.deployment_polls = 50

    def interrupt(progress):
        if progress.status == "pending":
            raise DagsterExecutionInterruptedError()

    with pytest.raises(DagsterExecutionInterruptedError):
        run_deployment(emu, lambda model, nim: None, on_progress=interrupt)
    assert emu.deployments_alive == []


def test_nim_deployment_cleanup_failure_does_not_hide_the_original_error(emu):
    emu.add_fault(Fault.status(403, message="forbidden to delete"), method="DELETE")

    def body(model, nim):
        raise RuntimeError("the real problem")

    with pytest.raises(RuntimeError, match="the real problem") as caught:
        run_deployment(emu, body)
    assert any("could not delete deployment dfwbp/nim-a" in note for note in caught.value.__notes__)


def test_nim_deployment_that_never_gets_ready_times_out_and_is_removed(emu):
    emu.deployment_polls = 10_000
    with client(DeploymentClient, emu) as deployments, client(NimProxyClient, emu) as nim:
        with pytest.raises(NemoTimeoutError, match="Deployment Management: deployment dfwbp/nim-a not done after"):
            with nim_deployment(deployments, nim, deployment_request(), interval_s=0.01, ready_timeout_s=0.05):
                pass
    assert emu.deployments_alive == []


# ----------------------------------------------------------------------------- NIM proxy


def test_nim_lists_models_after_its_sync_delay_and_wait_has_a_deadline(emu):
    serve(emu)
    with client(NimProxyClient, emu) as nim:
        assert nim.list_models() == []  # ready, not yet synced
        nim.wait_for_model(BASE, timeout_s=5, interval_s=0)
        assert nim.list_models() == [BASE]
        with pytest.raises(NemoTimeoutError, match="NIM proxy: model other not done after"):
            nim.wait_for_model("other", timeout_s=0.03, interval_s=0.01)


def test_deployment_vanishing_while_waited_on_is_an_error(emu):
    with client(DeploymentClient, emu) as deployments, pytest.raises(NemoError, match="disappeared"):
        deployments.wait_ready(NS, "never-created", timeout_s=1, interval_s=0)


def test_customizer_wait_survives_an_outage_longer_than_one_calls_retries(emu):
    make_dataset(emu)
    events = []
    with client(CustomizerClient, emu) as customizer:
        job_id = start_job(emu, customizer)
        emu.add_fault(Fault.status(503, message="gateway restarting"), path="/status$", times=FAST.max_retries + 3)
        status = customizer.wait(job_id, timeout_s=5, interval_s=0, on_progress=events.append)
    assert status.state == "completed"
    assert events[0].status == "unreachable" and "gateway restarting" in events[0].message


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("8", 8),
        (" 10\n", 10),
        ("1", 1),
        ("Score: 7", None),
        ("7-8", None),
        ("8/10", None),
        ("0", None),
        ("11", None),
        ("I'd say 3, maybe 10", None),
    ],
)
def test_the_evaluator_judge_reads_only_a_reply_that_is_the_score(reply, score):
    import re

    from resources.nemo.evaluator import JUDGE_SCORE_PATTERN

    match = re.search(JUDGE_SCORE_PATTERN, reply)
    assert (int(match[1]) if match else None) == score

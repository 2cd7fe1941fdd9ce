"""template.yaml (AWS SAM) and layers/: what the deployment promises, checked offline.

The structural checks read the template with a YAML loader that understands CloudFormation's
short tags; the lint checks run the SAM translator and cfn-lint (what `sam validate --lint`
does) without any AWS account. `sam` itself is used only when it is installed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from npf_loyalty.storage import Keys

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
BUCKET_ARN = "arn:${AWS::Partition}:s3:::${DataBucketName}"

# Which object keys each function may read and write, in the bucket's own vocabulary.
# Nothing else is allowed: a new access is a deliberate change to this table.
ACCESS: dict[str, dict[str, set[str]]] = {
    "IngestFunction": {
        "read": {f"{Keys.uploads}*", f"{Keys.clean}*", f"{Keys.features}*"},
        "write": {f"{Keys.clean}*", f"{Keys.quarantine}*", f"{Keys.features}*"},
    },
    "ScoreFunction": {
        "read": {f"{Keys.features}*", f"{Keys.models}*", f"{Keys.scores}*", f"{Keys.lookup}*"},
        "write": {f"{Keys.scores}*", f"{Keys.lookup}*"},
    },
    "ReportFunction": {
        "read": {
            f"{Keys.features}*",
            f"{Keys.scores}*",
            f"{Keys.models}*",
            f"{Keys.clean}*",
            f"{Keys.quarantine}*",
            f"{Keys.reports}*",
        },
        "write": {f"{Keys.reports}*"},
    },
    "BotWebhookFunction": {
        "read": {
            f"{Keys.lookup}*",
            f"{Keys.reports}*",
            f"{Keys.state}managers.json",
            f"{Keys.state}refused.json",
        },
        # the bot's access state (bot/access.py), nothing else
        "write": {f"{Keys.state}managers.json", f"{Keys.state}refused.json"},
    },
}
READ_ACTIONS = {"s3:GetObject"}
WRITE_ACTIONS = {"s3:PutObject", "s3:AbortMultipartUpload"}
LAYER_OF = {
    "IngestFunction": "ingest",
    "ScoreFunction": "score",
    "ReportFunction": "report",
    "BotWebhookFunction": "bot",
}


# --- reading the template ---------------------------------------------------------------
class CfnLoader(yaml.SafeLoader):
    """SafeLoader + CloudFormation short tags (!Ref, !Sub, !GetAtt, …) as their long forms."""


def _cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        return {"Fn::GetAtt": value.split(".", 1)}
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)
    return loaded


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return resources(template, "AWS::Serverless::Function")


def statements(function: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for policy in function["Properties"].get("Policies", []):
        assert isinstance(policy, dict) and "Statement" in policy, (
            "inline statements only: SAM policy templates and managed policies hide what is granted"
        )
        yield from policy["Statement"]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def text_of(value: Any) -> str:
    """The string inside a plain value or a !Sub."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return str(sub if isinstance(sub, str) else sub[0])
    return str(value)


def object_pattern(resource: Any) -> str | None:
    """'uploads/*' for arn:…:s3:::${DataBucketName}/uploads/*; None for the bucket itself."""
    arn = text_of(resource)
    if arn == BUCKET_ARN:
        return None
    assert arn.startswith(BUCKET_ARN + "/"), f"S3 access outside the data bucket: {arn}"
    return arn[len(BUCKET_ARN) + 1 :]


def s3_access(function: dict[str, Any]) -> dict[str, set[str]]:
    access: dict[str, set[str]] = {"read": set(), "write": set(), "bucket": set()}
    for statement in statements(function):
        assert statement["Effect"] == "Allow"
        actions = set(as_list(statement["Action"]))
        s3_actions = {a for a in actions if a.startswith("s3:")}
        if not s3_actions:
            continue
        assert s3_actions == actions, f"mixed statement: {sorted(actions)}"
        unknown = s3_actions - READ_ACTIONS - WRITE_ACTIONS - {"s3:ListBucket"}
        assert not unknown, f"unexpected S3 actions {sorted(unknown)} (no wildcards, no deletes)"
        for resource in as_list(statement["Resource"]):
            pattern = object_pattern(resource)
            if pattern is None:
                assert s3_actions == {"s3:ListBucket"}
                access["bucket"].add("list")
                continue
            assert "s3:ListBucket" not in s3_actions
            if s3_actions & READ_ACTIONS:
                access["read"].add(pattern)
            if s3_actions & WRITE_ACTIONS:
                access["write"].add(pattern)
    return access


def s3_filter(event: dict[str, Any]) -> dict[str, str]:
    rules = event["Properties"]["Filter"]["S3Key"]["Rules"]
    return {rule["Name"].lower(): rule["Value"] for rule in rules}


def matches(key: str, rules: dict[str, str]) -> bool:
    return key.startswith(rules.get("prefix", "")) and key.endswith(rules.get("suffix", ""))


def could_match(pattern: str, rules: dict[str, str]) -> bool:
    """Could a key written under a policy pattern ('features/*') fire this S3 filter?"""
    stem = pattern.removesuffix("*")
    prefix = rules.get("prefix", "")
    if pattern.endswith("*"):
        return stem.startswith(prefix) or prefix.startswith(stem)
    return matches(stem, rules)


# --- runtime, sizing, layers ----------------------------------------------------------------
def test_every_function_runs_python312_on_x86_64(template: dict[str, Any]) -> None:
    glob = template["Globals"]["Function"]
    assert glob["Runtime"] == "python3.12"
    assert glob["Architectures"] == ["x86_64"]
    for name, fn in functions(template).items():
        assert fn["Properties"].get("Runtime", "python3.12") == "python3.12", name
        assert fn["Properties"].get("Architectures", ["x86_64"]) == ["x86_64"], name
    for name, layer in resources(template, "AWS::Serverless::LayerVersion").items():
        assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"], name
        assert layer["Properties"]["CompatibleArchitectures"] == ["x86_64"], name


def test_each_function_has_its_own_layer_and_the_core(template: dict[str, Any]) -> None:
    assert set(functions(template)) == set(LAYER_OF)
    layers = resources(template, "AWS::Serverless::LayerVersion")
    for name, fn in functions(template).items():
        refs = [ref["Ref"] for ref in fn["Properties"]["Layers"]]
        deps = [r for r in refs if r != "CoreLayer"]
        assert "CoreLayer" in refs and len(deps) == 1, name
        assert layers[deps[0]]["Properties"]["ContentUri"] == f"layers/{LAYER_OF[name]}/"
    assert layers["CoreLayer"]["Properties"]["ContentUri"] == "src/"


def test_function_folders_hold_only_their_handler(template: dict[str, Any]) -> None:
    for name in ("IngestFunction", "ScoreFunction", "ReportFunction"):
        folder = ROOT / functions(template)[name]["Properties"]["CodeUri"]
        files = {p.name for p in folder.iterdir() if p.name != "__pycache__"}
        assert files <= {"handler.py"}, f"{folder} ships more than its handler: {sorted(files)}"


def test_memory_time_and_disk_fit_each_job(template: dict[str, Any]) -> None:
    props = {name: fn["Properties"] for name, fn in functions(template).items()}
    ingest = props["IngestFunction"]
    assert ingest["MemorySize"] <= 10240 and ingest["Timeout"] <= 900
    assert ingest["EphemeralStorage"]["Size"] == 10240
    assert 3072 <= props["ScoreFunction"]["MemorySize"] <= 4096
    assert props["ReportFunction"]["MemorySize"] == 2048
    assert 512 <= props["BotWebhookFunction"]["MemorySize"] <= 1024


def test_ingest_runs_one_at_a_time(template: dict[str, Any]) -> None:
    assert functions(template)["IngestFunction"]["Properties"]["ReservedConcurrentExecutions"] == 1


def test_layer_requirements_are_the_locked_versions() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "layers" / "build.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lock = dict(
        line.split("==")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for fn in LAYER_OF.values():
        for line in (ROOT / "layers" / fn / "requirements.txt").read_text().splitlines():
            if line and not line.startswith("#"):
                name, version = line.split("==")
                assert lock[name] == version, f"{fn}: {name} {version} is not the locked one"


def test_score_ships_no_training_stack() -> None:
    pins = (ROOT / "layers" / "score" / "requirements.txt").read_text()
    for heavy in ("catboost", "pandas", "pyarrow", "sympy", "onnx==", "scipy"):
        assert f"\n{heavy}" not in pins, heavy
    assert "\nonnxruntime==" in pins


# --- triggers ---------------------------------------------------------------------------
def test_ingest_fires_on_uploads_and_score_on_the_features_pointer_only(
    template: dict[str, Any],
) -> None:
    ingest = functions(template)["IngestFunction"]["Properties"]["Events"]
    score = functions(template)["ScoreFunction"]["Properties"]["Events"]
    (upload,) = ingest.values()
    (published,) = score.values()
    assert upload["Type"] == published["Type"] == "S3"
    assert upload["Properties"]["Events"] == "s3:ObjectCreated:*"
    assert s3_filter(upload) == {"prefix": Keys.uploads}
    assert s3_filter(published) == {"prefix": "features/_current", "suffix": ".json"}

    pointer = Keys.pointer(Keys.features)
    assert matches(pointer, s3_filter(published))
    for other in ("features/abc123/quarter=2023Q1/part-0.parquet", "features/abc123/meta.json"):
        assert not matches(other, s3_filter(published)), other
    assert matches("uploads/2023Q1/trnsctns.csv", s3_filter(upload))
    assert not matches(pointer, s3_filter(upload))


def test_no_function_can_trigger_itself_and_only_ingest_triggers_score(
    template: dict[str, Any],
) -> None:
    filters = {
        name: [
            s3_filter(e) for e in fn["Properties"].get("Events", {}).values() if e["Type"] == "S3"
        ]
        for name, fn in functions(template).items()
    }
    for name, fn in functions(template).items():
        writes = s3_access(fn)["write"]
        for pattern in writes:
            assert not could_match(pattern, {"prefix": Keys.uploads}), f"{name} writes uploads/"
            for rules in filters[name]:
                assert not could_match(pattern, rules), f"{name} could trigger itself"
            if name != "IngestFunction":
                for rules in filters["ScoreFunction"]:
                    assert not could_match(pattern, rules), f"{name} could trigger score"


def test_the_report_runs_at_the_start_of_each_quarter(template: dict[str, Any]) -> None:
    (event,) = functions(template)["ReportFunction"]["Properties"]["Events"].values()
    assert event["Type"] == "Schedule"
    schedule = event["Properties"]["Schedule"]
    assert schedule == "cron(0 5 1 1,4,7,10 ? *)"
    fields = schedule.removeprefix("cron(").removesuffix(")").split()
    day, months, weekday = fields[2], fields[3].split(","), fields[4]
    assert (day, months, weekday) == ("1", ["1", "4", "7", "10"], "?")
    dead = event["Properties"]["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
    assert template["Resources"][dead]["Type"] == "AWS::SQS::Queue"


# --- IAM --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ACCESS))
def test_each_function_touches_only_its_prefixes(template: dict[str, Any], name: str) -> None:
    access = s3_access(functions(template)[name])
    assert access["read"] == ACCESS[name]["read"]
    assert access["write"] == ACCESS[name]["write"]


def test_the_bot_writes_nothing_but_its_access_state(template: dict[str, Any]) -> None:
    writes = s3_access(functions(template)["BotWebhookFunction"])["write"]
    assert writes == {"state/managers.json", "state/refused.json"}
    assert all("*" not in pattern for pattern in writes)


def test_nothing_can_delete_and_raw_uploads_are_protected(template: dict[str, Any]) -> None:
    for name, fn in functions(template).items():
        for statement in statements(fn):
            for action in as_list(statement["Action"]):
                assert "Delete" not in action and action not in ("s3:*", "*"), (name, action)
    policy = template["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"]
    deny = [s for s in policy["Statement"] if s.get("Sid") == "RawUploadsAreNeverDeleted"]
    assert deny and deny[0]["Effect"] == "Deny" and deny[0]["Principal"] == "*"
    assert text_of(deny[0]["Resource"]) == f"{BUCKET_ARN}/{Keys.uploads}*"


def test_only_the_bot_and_report_read_ssm_and_only_their_path(template: dict[str, Any]) -> None:
    for name, fn in functions(template).items():
        ssm = [s for s in statements(fn) if any(a.startswith("ssm:") for a in as_list(s["Action"]))]
        if name not in ("BotWebhookFunction", "ReportFunction"):
            assert not ssm, name
            continue
        assert ssm, name
        for statement in ssm:
            assert set(as_list(statement["Action"])) <= {
                "ssm:GetParametersByPath",
                "ssm:GetParameter",
                "ssm:GetParameters",
            }
            for resource in as_list(statement["Resource"]):
                assert text_of(resource).endswith(
                    ("parameter${SsmPrefix}", "parameter${SsmPrefix}/*")
                )
        kms = [s for s in statements(fn) if "kms:Decrypt" in as_list(s["Action"])]
        via_ssm = [
            s
            for s in kms
            if "ssm."
            in text_of(s.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService", ""))
        ]
        assert via_ssm and all(s["Resource"] == "*" for s in via_ssm), name


def test_kms_use_is_conditioned_on_the_calling_service(template: dict[str, Any]) -> None:
    for name, fn in functions(template).items():
        for statement in statements(fn):
            if any(a.startswith("kms:") for a in as_list(statement["Action"])):
                via = statement["Condition"]["StringEquals"]["kms:ViaService"]
                assert text_of(via).split(".")[0] in ("s3", "ssm"), name


# --- secrets ------------------------------------------------------------------------------
TOKEN_LIKE = [
    re.compile(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}\b"),  # Telegram bot token
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b[A-Za-z0-9+/]{40}\b"),  # AWS secret access key shape
]


def test_no_secret_values_in_the_template(template: dict[str, Any]) -> None:
    text = TEMPLATE.read_text()
    for pattern in TOKEN_LIKE:
        assert not pattern.search(text), pattern.pattern
    for name, fn in functions(template).items():
        env = fn["Properties"].get("Environment", {}).get("Variables", {})
        for var in env:
            assert not re.search(r"TOKEN|SECRET|PASSWORD|KEY$", var), (name, var)
    for name in template["Parameters"]:
        assert not re.search(r"(?i)token|secret|password", name), name


def test_the_bot_url_is_public_and_exported(template: dict[str, Any]) -> None:
    bot = functions(template)["BotWebhookFunction"]["Properties"]
    assert bot["FunctionUrlConfig"]["AuthType"] == "NONE"
    assert bot["Handler"] == "bot.webhook.handler"
    url = template["Outputs"]["BotWebhookUrl"]["Value"]
    assert url == {"Fn::GetAtt": ["BotWebhookFunctionUrl", "FunctionUrl"]}


def test_environment_points_at_the_bucket_and_tmp(template: dict[str, Any]) -> None:
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert text_of(env["NPF_STORE"]) == "s3://${DataBucketName}"
    assert env["NPF_WORK_DIR"] == "/tmp"
    for name, fn in functions(template).items():
        own = fn["Properties"].get("Environment", {}).get("Variables", {})
        has_ssm = "NPF_SSM_PREFIX" in own
        assert has_ssm == (name in ("BotWebhookFunction", "ReportFunction")), name
        if has_ssm:
            assert own["NPF_SSM_PREFIX"] == {"Ref": "SsmPrefix"}


# --- failures are kept and seen -----------------------------------------------------------
def test_failed_async_events_are_kept_and_alarmed(template: dict[str, Any]) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm").values()
    watched_queues = {
        a["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for a in alarms
        if a["Properties"]["Namespace"] == "AWS/SQS"
    }
    for name in ("IngestFunction", "ScoreFunction", "ReportFunction"):
        config = functions(template)[name]["Properties"]["EventInvokeConfig"]
        on_failure = config["DestinationConfig"]["OnFailure"]
        assert on_failure["Type"] == "SQS"
        queue = on_failure["Destination"]["Fn::GetAtt"][0]
        assert template["Resources"][queue]["Type"] == "AWS::SQS::Queue"
        assert template["Resources"][queue]["Properties"]["MessageRetentionPeriod"] == 1209600
        assert queue in watched_queues, f"no alarm on {queue}"
    assert "ReportScheduleDeadLetters" in watched_queues


def test_every_function_has_an_error_alarm_and_a_log_group_with_retention(
    template: dict[str, Any],
) -> None:
    alarmed = {
        a["Properties"]["Dimensions"][0]["Value"]["Ref"]
        for a in resources(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"]["MetricName"] == "Errors"
    }
    groups = resources(template, "AWS::Logs::LogGroup")
    for name, fn in functions(template).items():
        assert name in alarmed, name
        group = fn["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert groups[group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert template["Parameters"]["LogRetentionDays"]["Default"] in (30, 60, 90, 180, 365)


def test_the_bucket_keeps_every_version_and_is_private(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["DataBucket"]
    props = bucket["Properties"]
    assert bucket["DeletionPolicy"] == "Retain"
    assert props["VersioningConfiguration"]["Status"] == "Enabled"
    assert all(props["PublicAccessBlockConfiguration"].values())
    sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    rules = props["LifecycleConfiguration"]["Rules"]
    for rule in rules:
        prefix = rule.get("Prefix", "")
        if Keys.uploads.startswith(prefix):  # a rule that reaches uploads/
            assert set(rule) <= {"Id", "Status", "Prefix", "AbortIncompleteMultipartUpload"}, rule
        assert not prefix.startswith(Keys.models), "promoted models are kept"
    quarantine = [r for r in rules if r.get("Prefix") == Keys.quarantine]
    assert quarantine and quarantine[0]["ExpirationInDays"] == 365


# --- the handlers import only what their layers ship -------------------------------------
_BLOCKER = """
import importlib, importlib.abc, importlib.metadata as md, json, re, sys
sys.path.insert(0, sys.argv[3])
allowed = set(json.loads(sys.argv[1]))
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
owners = md.packages_distributions()
blocked = {m for m, ds in owners.items() if not any(norm(d) in allowed for d in ds)}
blocked -= {"npf_loyalty", "bot", "functions", "tests"} | set(sys.modules)
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in blocked:
            raise ModuleNotFoundError(f"{top} is not in this function's layer", name=top)
        return None
sys.meta_path.insert(0, Blocker())
for module in json.loads(sys.argv[2]):
    importlib.import_module(module)
"""

# module-level imports of the handler, plus what the code imports lazily on its main path
IMPORTS = {
    "ingest": ["functions.ingest.handler", "openpyxl"],
    "score": ["functions.score.handler", "npf_loyalty.onnx_runtime", "npf_loyalty.scoring"],
    # (aiogram, imported for delivery, is checked through the bot: same closure, slow import)
    "report": ["functions.report.handler", "npf_loyalty.charts_report", "openpyxl"],
    "bot": ["bot.webhook"],
}


@pytest.mark.parametrize(
    "function",
    [
        "ingest",
        "score",
        "report",
        "bot",
    ],
)
def test_the_handler_imports_only_what_its_layer_ships(function: str, tmp_path: Path) -> None:
    pins = (ROOT / "layers" / function / "requirements.txt").read_text().splitlines()
    allowed = sorted(re.sub(r"[-_.]+", "-", p.split("==")[0]).lower() for p in pins if "==" in p)
    env = {
        **os.environ,
        "NPF_STORE": str(tmp_path / "store"),
        "NPF_WORK_DIR": str(tmp_path),
        "NPF_BOT_TOKEN": "1:test-token-for-imports",
    }
    env.pop("NPF_SSM_PREFIX", None)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _BLOCKER,
            json.dumps(allowed),
            json.dumps(IMPORTS[function]),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


# --- lint: the SAM translation and cfn-lint, offline ---------------------------------------
def _offline_transform() -> dict[str, Any]:
    from samtranslator.translator.transform import transform

    class Policies:
        def load(self) -> dict[str, str]:
            return {
                "AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/"
                "AWSLambdaBasicExecutionRole"
            }

    source = yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)
    sam = copy.deepcopy(source)
    for resource in sam["Resources"].values():  # sam package would upload these
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str):
                props[key] = "s3://npf-artifacts/placeholder.zip"
    transformed: dict[str, Any] = transform(sam, {"DataBucketName": "npf-lint-test"}, Policies())
    return transformed


def _lint(path: Path) -> list[str]:
    from cfnlint.api import ManualArgs, lint

    # errors and warnings, as the cfn-lint command reports by default (I… are informational),
    # for the regions the stack is meant for (not every region has every resource type)
    found = lint(path.read_text(), config=ManualArgs(regions=["eu-central-1", "us-east-1"]))
    return [str(m) for m in found if m.rule.id[0] in ("E", "W")]


@pytest.mark.slow
def test_cfn_lint_passes_on_the_sam_template() -> None:
    pytest.importorskip("cfnlint", reason="cfn-lint is in the dev extra")
    assert _lint(TEMPLATE) == []


@pytest.mark.slow
def test_the_sam_translation_yields_a_lint_clean_cloudformation_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("samtranslator", reason="aws-sam-translator is in the dev extra")
    pytest.importorskip("cfnlint", reason="cfn-lint is in the dev extra")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    transformed = _offline_transform()
    kinds = {r["Type"] for r in transformed["Resources"].values()}
    assert {"AWS::Lambda::Url", "AWS::Lambda::EventInvokeConfig", "AWS::Events::Rule"} <= kinds
    notifications = transformed["Resources"]["DataBucket"]["Properties"][
        "NotificationConfiguration"
    ]
    assert len(notifications["LambdaConfigurations"]) == 2
    out = tmp_path / "transformed.json"
    out.write_text(json.dumps(transformed))
    assert _lint(out) == []


@pytest.mark.slow
def test_sam_validate_lint() -> None:
    sam = shutil.which("sam")
    if sam is None:
        pytest.skip("the sam CLI is not installed (pip install -e .[deploy])")
    done = subprocess.run(
        [sam, "validate", "--lint", "--template-file", str(TEMPLATE)],
        capture_output=True,
        text=True,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "eu-central-1"},
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _load_layers_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("npf_layers_build", ROOT / "layers" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_layer_install_targets_lambda_not_this_machine() -> None:
    build = _load_layers_build()
    args = build.pip_install_args(Path("requirements.txt"), Path("out"))
    assert "--no-deps" in args and "--only-binary=:all:" in args and "--no-compile" in args
    assert args[args.index("--python-version") + 1] == "3.12"
    platforms = {args[i + 1] for i, a in enumerate(args) if a == "--platform"}
    assert {"manylinux2014_x86_64", "manylinux_2_28_x86_64"} <= platforms

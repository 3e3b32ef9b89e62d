import importlib
import json
import re
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from daskgmm_pipelines.config import ConfigError, JobConfig, load_config, resolve_storage_options

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

MINIMAL = """\
name: job
source:
  uri: data/x.zarr
outputs:
  model_store: models
"""


def write(tmp_path, text, name="job.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path, text):
    return load_config(write(tmp_path, text))


# --- shipped configs ------------------------------------------------------------------------

def test_demo_config():
    config = load_config(CONFIGS / "demo.yaml")
    assert config.name == "demo"
    assert config.source.uri == "demo-data/demo.zarr"
    assert config.source.array_name == "X"
    assert config.model.n_components == list(range(1, 9))
    assert config.model.covariance_types == ["full", "diag"]
    assert (config.model.n_init, config.model.seed) == (1, 0)
    assert config.anomaly.contamination == 0.005
    assert config.outputs.scores is None
    assert config.outputs.model_store == "demo-data/models"
    assert config.cluster.address is None
    assert (config.cluster.n_workers, config.cluster.threads_per_worker) == (2, 1)
    assert config.cluster.memory_limit == "2GiB"
    assert (config.schedule.cron, config.schedule.timezone) == ("0 2 * * *", "UTC")
    assert config.nightly == JobConfig.model_validate(
        {"name": "x", "source": {"uri": "x.zarr"}, "outputs": {"model_store": "m"}}
    ).nightly


def test_s3_example_config():
    config = load_config(CONFIGS / "s3-example.yaml")
    assert config.source.uri == "s3://my-bucket/features/"
    assert config.source.format == "parquet"
    assert config.source.id_columns == ["event_id"]
    assert config.source.columns
    assert config.source.storage_options == {
        "key": {"env": "AWS_ACCESS_KEY_ID"},
        "secret": {"env": "AWS_SECRET_ACCESS_KEY"},
        "client_kwargs": {"endpoint_url": "https://s3.example.com", "region_name": "eu-west-1"},
    }
    assert config.outputs.scores == "s3://my-bucket/scores/"
    assert config.outputs.model_store == "s3://my-bucket/models/"
    assert config.outputs.storage_options == config.source.storage_options
    assert config.cluster.address == "tcp://dask-scheduler:8786"
    assert config.nightly.reselect_every_days == 7


# --- defaults and forms ---------------------------------------------------------------------

def test_defaults(tmp_path):
    config = load(tmp_path, MINIMAL)
    assert config.source.format == "auto"
    assert config.source.array_name is None and config.source.columns is None
    assert config.source.id_columns == [] and config.source.storage_options == {}
    model = config.model
    assert model.n_components == list(range(1, 11))
    assert model.covariance_types == ["full"]
    assert (model.criterion, model.n_init, model.tol, model.max_iter) == ("bic", 1, 1e-3, 100)
    assert (model.reg_covar, model.seed, model.init) == (1e-6, 0, "kmeans")
    assert (config.anomaly.contamination, config.anomaly.threshold) == (0.01, None)
    assert config.outputs.scores is None and config.outputs.storage_options == {}
    cluster = config.cluster
    assert (cluster.address, cluster.n_workers, cluster.threads_per_worker) == (None, 2, 1)
    assert (cluster.memory_limit, cluster.processes) == ("2GiB", True)
    assert (config.schedule.cron, config.schedule.timezone) == ("0 2 * * *", "UTC")
    nightly = config.nightly
    assert (nightly.warm_start, nightly.reselect_every_days) == (True, 7)
    assert (nightly.drift_margin, nightly.checkpoint_every) == (0.5, 5)


@pytest.mark.parametrize(("written", "expected"), [
    ("3", [3]),
    ("[5, 2, 3]", [2, 3, 5]),
    ("{min: 2, max: 4}", [2, 3, 4]),
    ("{min: 4, max: 4}", [4]),
])
def test_n_components_forms(tmp_path, written, expected):
    config = load(tmp_path, MINIMAL + f"model:\n  n_components: {written}\n")
    assert config.model.n_components == expected


@pytest.mark.parametrize(("written", "match"), [
    ("[2, 5, 2]", r"model\.n_components \(line 7\): 2 listed more than once"),
    ("[]", r"model\.n_components \(line 7\): .*at least 1 item"),
    ("0", r"model\.n_components \(line 7\): need n_components >= 1, got 0"),
    ("[1, 0]", r"model\.n_components\.1 \(line 7\): .*greater than or equal to 1, got 0"),
    ("{min: 4, max: 2}", r"need 1 <= min <= max, got min=4, max=2"),
    ("{min: 0, max: 2}", r"need 1 <= min <= max, got min=0, max=2"),
    ("{from: 1, to: 3}", r"written \{min: 1, max: 10\}; got the keys from, to"),
    ("five", r"expected an int, a list of ints or \{min: 1, max: 10\}, got 'five'"),
])
def test_n_components_rejected(tmp_path, written, match):
    with pytest.raises(ConfigError, match=match):
        load(tmp_path, MINIMAL + f"model:\n  n_components: {written}\n")


def test_outputs_storage_options_default_to_the_source(tmp_path):
    options = "  storage_options:\n    anon: true\n"
    config = load(tmp_path, MINIMAL.replace("  uri: data/x.zarr\n",
                                            "  uri: data/x.zarr\n" + options))
    assert config.outputs.storage_options == {"anon": True}
    config = load(tmp_path, MINIMAL.replace("  uri: data/x.zarr\n",
                                            "  uri: data/x.zarr\n" + options)
                  + "  storage_options: {}\n")
    assert config.outputs.storage_options == {}


def test_pyyaml_exponent_without_dot_is_a_number(tmp_path):
    # PyYAML reads 1e-4 as a string (YAML 1.1 wants 1.0e-4)
    assert load(tmp_path, MINIMAL + "model:\n  tol: 1e-4\n").model.tol == 1e-4


def test_summary_is_json_and_round_trips(tmp_path):
    config = load_config(CONFIGS / "s3-example.yaml")
    summary = json.loads(json.dumps(config.summary()))
    assert summary["source"]["storage_options"]["secret"] == {"env": "AWS_SECRET_ACCESS_KEY"}
    assert JobConfig.model_validate(summary) == config
    config = load(tmp_path, MINIMAL + "anomaly:\n  threshold: -40.0\n")
    assert JobConfig.model_validate(config.summary()) == config


def test_relative_paths_stay_as_written(tmp_path):
    config = load(tmp_path, MINIMAL)
    assert (config.source.uri, config.outputs.model_store) == ("data/x.zarr", "models")


# --- errors: keys, lines, messages ----------------------------------------------------------

def test_unknown_key_names_key_line_and_known_keys(tmp_path):
    path = write(tmp_path, MINIMAL + "model:\n  n_component: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.splitlines()[0] == f"{path}: invalid job configuration (1 problem):"
    assert message.splitlines()[1] == (
        f"{path}: model.n_component (line 7): unknown key; did you mean 'n_components'? "
        "known keys: n_components, covariance_types, criterion, n_init, tol, max_iter, "
        "reg_covar, seed, init, nan_policy"
    )


def test_wrong_type_names_key_line_and_value(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(
        "cluster.n_workers (line 7): Input should be a valid integer, unable to parse "
        "string as an integer, got 'two'"
    )):
        load(tmp_path, MINIMAL + "cluster:\n  n_workers: two\n")


def test_wrong_literal_names_list_index(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(
        "model.covariance_types.1 (line 9): Input should be 'full', 'tied', 'diag' or "
        "'spherical', got 'fulll'"
    )):
        load(tmp_path, MINIMAL + "model:\n  covariance_types:\n    - diag\n    - fulll\n")


def test_boolean_is_not_a_number(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.n_init \(line 7\): expected a number, "
                                          r"got the boolean true"):
        load(tmp_path, MINIMAL + "model:\n  n_init: yes\n")


def test_missing_keys(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "name: job\noutputs:\n  scores: s\n")
    lines = str(info.value).splitlines()[1:]
    assert [line.split(": ", 1)[1] for line in lines] == [
        "source: required key is missing",
        "outputs.model_store (in outputs, line 2): required key is missing",
    ]


def test_several_errors_reported_at_once_in_file_order(tmp_path):
    path = write(tmp_path, """\
        name: bad name
        source:
          uri: data/x.zarr
          format: csv
        model:
          n_init: 0
          criterion: bic
        outputs:
          model_store: models
        cluster:
          threads_per_worker: -1
        nightly:
          drift_margin: x
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: invalid job configuration (5 problems):"
    assert [re.match(rf"{re.escape(str(path))}: (\S+) \(line (\d+)\)", line).groups()
            for line in lines[1:]] == [
        ("name", "1"), ("source.format", "4"), ("model.n_init", "6"),
        ("cluster.threads_per_worker", "11"), ("nightly.drift_margin", "13"),
    ]


def test_duplicate_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model \(line 8\): duplicate key \(first at line "
                                          r"6\); YAML would keep only this one"):
        load(tmp_path, MINIMAL + "model:\n  n_init: 2\nmodel:\n  n_init: 3\n")


@pytest.mark.parametrize(("cron", "match"), [
    ("0 2 * *", r"a cron expression has 5 fields .*got 4 in '0 2 \* \*'"),
    ("0 2 * * * *", r"a cron expression has 5 fields .*got 6"),
    ("@daily", r"a cron expression has 5 fields .*got 1"),
    ("61 2 * * *", r"minute field of '61 2 \* \* \*': '61' is not in 0-59"),
    ("0 24 * * *", r"hour field .*'24' is not in 0-23"),
    ("0 2 0 * *", r"day of month field .*'0' is not in 1-31"),
    ("0 2 * 13 *", r"month field .*'13' is not in 1-12 or a name such as 'jan'"),
    ("0 2 * * fri-mon", r"day of week field 'fri-mon' .*runs backwards"),
    ("*/0 * * * *", r"minute field '\*/0' .*a step is >= 1"),
    ("0 2 L * *", r"day of month field .*'L' is not in 1-31"),
    ("0 2 ? * *", r"day of month field '\?' .*cannot read '\?'"),
])
def test_bad_cron(tmp_path, cron, match):
    with pytest.raises(ConfigError, match=r"schedule\.cron \(line 7\): " + match):
        load(tmp_path, MINIMAL + f"schedule:\n  cron: '{cron}'\n")


GOOD_CRONS = ["0 2 * * *", "*/15 * * * *", "0 0 1 1 *", "0 3 * * 7", "0 3 * * sun",
              "30 1 * JAN-mar mon-FRI", "5/10 * * * *", "0 2 * * 1-5/2", "0,30 1,13 * * *",
              "0 2 * * mon-sun", "0 2 * * 0-7"]
BAD_CRONS = ["60 * * * *", "* 24 * * *", "* * 0 * *", "* * 32 * *", "* * * 13 *",
             "* * * * 8", "*/0 * * * *", "0 2 * *", "H * * * *", "1-2-3 * * * *", "-1 * * * *"]


@pytest.mark.parametrize("cron", GOOD_CRONS)
def test_good_cron(tmp_path, cron):
    assert load(tmp_path, MINIMAL + f"schedule:\n  cron: '{cron}'\n").schedule.cron == cron


def test_cron_check_agrees_with_croniter(tmp_path):
    # croniter checks the cron schedules of Prefect deployments; what we accept, it accepts
    for name in ("croniter", "prefect._vendor.croniter"):
        try:
            croniter = importlib.import_module(name).croniter
            break
        except ImportError:
            continue
    else:
        pytest.skip("croniter is not importable")
    assert all(croniter.is_valid(cron) for cron in GOOD_CRONS)
    assert not any(croniter.is_valid(cron) for cron in BAD_CRONS)
    for cron in BAD_CRONS:
        with pytest.raises(ConfigError, match=r"schedule\.cron \(line 7\)"):
            load(tmp_path, MINIMAL + f"schedule:\n  cron: '{cron}'\n")


def test_unquoted_cron_star_is_a_yaml_error_with_a_hint(tmp_path):
    with pytest.raises(ConfigError, match=r"YAML syntax error at line 7, .*quote values "
                                          r"starting with \*"):
        load(tmp_path, MINIMAL + "schedule:\n  cron: */5 * * * *\n")


def test_bad_timezone(tmp_path):
    with pytest.raises(ConfigError, match=r"schedule\.timezone \(line 7\): unknown time zone "
                                          r"'Europe/Pariss'; use an IANA name"):
        load(tmp_path, MINIMAL + "schedule:\n  timezone: Europe/Pariss\n")


@pytest.mark.parametrize("limit", ["2 gigs", "0", "-1GB", "''", "2048"])
def test_bad_memory_limit(tmp_path, limit):
    with pytest.raises(ConfigError, match=r"cluster\.memory_limit \(line 7\): cannot read "
                                          r".* as a memory size; write for example '2GiB'"):
        load(tmp_path, MINIMAL + f"cluster:\n  memory_limit: {limit}\n")


@pytest.mark.parametrize(("limit", "expected"),
                         [("500MB", "500MB"), ("1.5 GiB", "1.5 GiB"), ("auto", "auto"),
                          ("null", None)])
def test_memory_limit(tmp_path, limit, expected):
    config = load(tmp_path, MINIMAL + f"cluster:\n  memory_limit: {limit}\n")
    assert config.cluster.memory_limit == expected


def test_scheduler_address(tmp_path):
    config = load(tmp_path, MINIMAL + "cluster:\n  address: tcp://scheduler:8786\n")
    assert config.cluster.address == "tcp://scheduler:8786"
    with pytest.raises(ConfigError, match=r"cluster\.address \(line 7\): a Dask scheduler "
                                          r"address looks like 'tcp://dask-scheduler:8786'"):
        load(tmp_path, MINIMAL + "cluster:\n  address: http://scheduler:8787\n")


def test_contamination_and_threshold_exclusive(tmp_path):
    with pytest.raises(ConfigError, match=r"anomaly\.threshold \(line 8\): give contamination "
                                          r"or threshold, not both"):
        load(tmp_path, MINIMAL + "anomaly:\n  contamination: 0.01\n  threshold: -40.0\n")
    config = load(tmp_path, MINIMAL + "anomaly:\n  threshold: -40.0\n")
    assert (config.anomaly.contamination, config.anomaly.threshold) == (None, -40.0)


@pytest.mark.parametrize("value", ["0", "0.6", "null"])
def test_contamination_range(tmp_path, value):
    with pytest.raises(ConfigError, match=r"anomaly\.contamination \(line 7\)"):
        load(tmp_path, MINIMAL + f"anomaly:\n  contamination: {value}\n")


def test_scores_null_needs_a_zarr_source(tmp_path):
    parquet = MINIMAL.replace("data/x.zarr", "s3://bucket/features/")
    with pytest.raises(ConfigError, match=r"outputs\.scores \(in outputs, line 4\): null "
                                          r"writes the scores into the source's Zarr group"):
        load(tmp_path, parquet)
    config = load(tmp_path, parquet.replace("  uri:", "  format: zarr\n  uri:"))
    assert config.outputs.scores is None


def test_source_keys_match_its_format(tmp_path):
    with pytest.raises(ConfigError, match=r"source\.columns \(line 5\): applies to Parquet "
                                          r"sources only"):
        load(tmp_path, MINIMAL.replace("  uri: data/x.zarr\n",
                                       "  uri: data/x.zarr\n  format: zarr\n  columns: [a]\n"))
    with pytest.raises(ConfigError, match=r"source\.id_columns \(line 5\): id also in columns"):
        load(tmp_path, MINIMAL.replace("  uri: data/x.zarr\n",
                                       "  uri: data/x.zarr\n  columns: [a, id]\n"
                                       "  id_columns: [id]\n"))


# --- secrets --------------------------------------------------------------------------------

def with_options(options):
    return MINIMAL.replace("  uri: data/x.zarr\n", "  uri: data/x.zarr\n  storage_options:\n"
                           + textwrap.indent(textwrap.dedent(options), "    "))


@pytest.mark.parametrize(("options", "key", "line", "variable"), [
    ("secret: wJalrXUtnFEMIxK7MDENG\n", "secret", 5, "AWS_SECRET_ACCESS_KEY"),
    ("key: wJalrXUtnFEMIxK7MDENG\n", "key", 5, "AWS_ACCESS_KEY_ID"),
    ("anon: false\nclient_kwargs:\n  aws_session_token: wJalrXUtnFEMIxK7MDENG\n",
     "client_kwargs.aws_session_token", 7, "AWS_SESSION_TOKEN"),
    ("Password: wJalrXUtnFEMIxK7MDENG\n", "Password", 5, "PASSWORD"),
    ("credentials: [wJalrXUtnFEMIxK7MDENG]\n", "credentials.0", 5, "CREDENTIALS"),
])
def test_inline_secret_rejected_without_showing_it(tmp_path, options, key, line, variable):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, with_options(options))
    message = str(info.value)
    assert re.search(rf"source\.storage_options\.{re.escape(key)} \(line {line}\): inline "
                     rf"secret; write it as {{env: {variable}}}", message)
    assert "wJalrXUtnFEMIxK7MDENG" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_inline_secret_hidden_from_validation_error():
    with pytest.raises(ValidationError, match="inline secret") as info:
        JobConfig.model_validate({
            "name": "job", "source": {"uri": "x.zarr", "storage_options": {"secret": "hunter2"}},
            "outputs": {"model_store": "m"},
        })
    assert "hunter2" not in str(info.value)


def test_plain_storage_options_allowed(tmp_path):
    config = load(tmp_path, with_options("""\
        anon: false
        use_listings_cache: false
        key: {env: AWS_ACCESS_KEY_ID}
        client_kwargs:
          endpoint_url: https://s3.example.com
          region_name: eu-west-1
        config_kwargs:
          s3: {addressing_style: path}
        """))
    assert config.source.storage_options["client_kwargs"]["region_name"] == "eu-west-1"


@pytest.mark.parametrize(("reference", "match"), [
    ("{env: AWS_SECRET, default: x}", r"an environment reference has the single key 'env'.*"
                                        r"found keys env, default"),
    ("{env: 'wJalrXUtnF/EMIxK7MDENG'}", r"\{env: NAME\} must name an environment variable"),
    ("{env: 3}", r"\{env: NAME\} must name an environment variable"),
])
def test_bad_env_reference(tmp_path, reference, match):
    with pytest.raises(ConfigError, match=r"source\.storage_options\.secret \(line 5\): "
                                          + match) as info:
        load(tmp_path, with_options(f"secret: {reference}\n"))
    assert "wJalrXUtnF" not in str(info.value)


SECRET_OPTIONS = """\
    key: {env: DASKGMM_TEST_KEY}
    secret: {env: DASKGMM_TEST_SECRET}
    client_kwargs:
      endpoint_url: https://s3.example.com
      headers: [{env: DASKGMM_TEST_KEY}]
    """


def test_env_references_resolve_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("DASKGMM_TEST_KEY", raising=False)
    monkeypatch.delenv("DASKGMM_TEST_SECRET", raising=False)
    config = load(tmp_path, with_options(SECRET_OPTIONS))  # unset variables: loads
    monkeypatch.setenv("DASKGMM_TEST_KEY", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("DASKGMM_TEST_SECRET", "s3cr3t-value")
    options = config.source.storage_options
    assert resolve_storage_options(options) == {
        "key": "AKIAEXAMPLEKEY",
        "secret": "s3cr3t-value",
        "client_kwargs": {"endpoint_url": "https://s3.example.com",
                          "headers": ["AKIAEXAMPLEKEY"]},
    }
    assert options["secret"] == {"env": "DASKGMM_TEST_SECRET"}  # not modified
    shown = [repr(config), str(config), json.dumps(config.summary()), str(config.model_dump())]
    assert not any("s3cr3t-value" in text or "AKIAEXAMPLEKEY" in text for text in shown)


def test_missing_env_variable_names_variable_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("DASKGMM_TEST_KEY", "AKIAEXAMPLEKEY")
    monkeypatch.delenv("DASKGMM_TEST_SECRET", raising=False)
    config = load(tmp_path, with_options(SECRET_OPTIONS))
    with pytest.raises(ConfigError, match=r"^source\.storage_options\.secret: environment "
                                          r"variable DASKGMM_TEST_SECRET is not set") as info:
        resolve_storage_options(config.source.storage_options, "source.storage_options")
    assert "AKIAEXAMPLEKEY" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^storage_options\.secret: environment variable "
                                          r"DASKGMM_TEST_SECRET"):
        resolve_storage_options(config.outputs.storage_options)


# --- unreadable files -----------------------------------------------------------------------

def test_yaml_syntax_error_reports_line(tmp_path):
    path = write(tmp_path, "name: job\nsource:\n  uri: [data/x.zarr\noutputs: {}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: YAML syntax error at "
                                          rf"line 4, column \d+: "):
        load_config(path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match=rf"job file '{re.escape(str(path))}' not found"):
        load_config(path)


@pytest.mark.parametrize(("text", "got"), [("", "an empty file"), ("- a\n- b\n", "a list"),
                                           ("just text\n", "a str")])
def test_top_level_not_a_mapping(tmp_path, text, got):
    with pytest.raises(ConfigError, match=rf"a job file is a mapping of keys .*got {got}$"):
        load(tmp_path, text)


@pytest.mark.parametrize(("where", "text"), [
    ("source.uri", "source:\n  uri: https://KEY:SECRET@host/data.zarr\n"
                   "outputs:\n  model_store: m\n"),
    ("outputs.model_store", "source:\n  uri: x.zarr\n"
                            "outputs:\n  model_store: s3://AK:SECRET@bucket/models\n"),
    ("source.storage_options.client_kwargs.endpoint_url",
     "source:\n  uri: x.zarr\n  storage_options:\n    client_kwargs:\n"
     "      endpoint_url: http://user:SECRET@minio:9000\noutputs:\n  model_store: m\n"),
])
def test_credentials_inside_urls_are_refused_without_being_shown(tmp_path, where, text):
    path = tmp_path / "job.yaml"
    path.write_text("name: t\n" + text)
    with pytest.raises(ConfigError, match=rf"{where} \(line \d+\): credentials inside a "
                                          r"URL") as err:
        load_config(path)
    assert "SECRET" not in str(err.value)


def test_alias_bombs_are_refused_quickly_in_bounded_memory(tmp_path):
    import resource
    import time

    lines = ["name: t", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")  # 9**9 = 387 million strings once expanded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(ConfigError, match="expands to more than 10,000 values through its "
                                          "aliases"):
        load_config(path)
    assert time.monotonic() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
    path.write_text("name: t\npad: '" + "x" * 300_000 + "'\n")
    with pytest.raises(ConfigError, match=r"a job file is at most 262,144 bytes"):
        load_config(path)


@pytest.mark.parametrize(("key", "value"), [
    ("nightly:\n  drift_margin", ".inf"), ("anomaly:\n  threshold", ".nan"),
    ("model:\n  tol", ".inf"), ("model:\n  reg_covar", ".nan"),
])
def test_non_finite_numbers_are_refused(tmp_path, key, value):
    path = tmp_path / "job.yaml"
    path.write_text(f"name: t\nsource:\n  uri: x.zarr\noutputs:\n  model_store: m\n"
                    f"{key}: {value}\n")
    dotted = key.replace(":\n  ", ".")
    with pytest.raises(ConfigError, match=rf"{dotted} \(line 7\): Input should be (a finite "
                                          rf"number|greater than or equal to 0), got"):
        load_config(path)


# --- the cluster: backends ------------------------------------------------------------------

def _make_certs():
    spec = importlib.util.spec_from_file_location(
        "make_certs", CONFIGS.parent / "deploy" / "local" / "make-certs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """Throwaway certificates of deploy/local/make-certs.py: two CAs' sets."""
    made = {}
    for name in ("ca", "other"):
        made[name] = tmp_path_factory.mktemp(name)
        _make_certs()(made[name])
    return made


def cluster_file(tmp_path, text):
    return write(tmp_path, MINIMAL + "cluster:\n" + textwrap.indent(textwrap.dedent(text), "  "))


def tls_section(directory, key=True):
    text = f"tls:\n  ca_file: {directory}/ca.pem\n  cert_file: {directory}/client.pem\n"
    return text + (f"  key_file: {directory}/client-key.pem\n" if key else "")


@pytest.mark.parametrize(("name", "backend"), [
    ("demo.yaml", "local"), ("demo-parquet.yaml", "local"), ("s3-example.yaml", "address"),
    ("local-scheduler.yaml", "address")])
def test_shipped_configs_keep_their_backend(name, backend):
    cluster = load_config(CONFIGS / name).cluster
    assert cluster.backend == backend
    assert (cluster.jobqueue, cluster.kubernetes, cluster.tls) == (None, None, None)


def test_the_tls_recipe_config_loads_where_its_certificates_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its paths are relative to the working directory
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "local-scheduler-tls.yaml")
    assert re.search(r"cluster\.tls\.ca_file \(line \d+\): no file 'deploy/local/tls/ca\.pem' "
                     rf"\(relative paths start at the working directory {re.escape(str(tmp_path))}"
                     r"\); for throwaway certificates run python deploy/local/make-certs\.py "
                     r"deploy/local/tls", str(info.value))
    _make_certs()(tmp_path / "deploy" / "local" / "tls")
    config = load_config(CONFIGS / "local-scheduler-tls.yaml")
    assert config.name == "local-scheduler-tls"
    assert config.cluster.backend == "address"
    assert config.cluster.address == "tls://127.0.0.1:8786"
    assert config.cluster.tls.key_file == "deploy/local/tls/client-key.pem"
    assert config.outputs.model_store == "demo-data/models-local-scheduler-tls"
    assert JobConfig.model_validate(config.summary()) == config


def test_backend_defaults_to_address_when_an_address_is_given(tmp_path):
    assert load(tmp_path, MINIMAL).cluster.backend == "local"
    assert load(tmp_path, MINIMAL + "cluster:\n  address: null\n").cluster.backend == "local"
    config = load(tmp_path, MINIMAL + "cluster:\n  address: tcp://h:8786\n")
    assert config.cluster.backend == "address"


def test_unknown_backend_lists_the_backends(tmp_path):
    with pytest.raises(ConfigError, match=r"cluster\.backend \(line 7\): Input should be "
                                          r"'local', 'address', 'slurm', 'pbs' or "
                                          r"'kubernetes', got 'slrum'"):
        load(tmp_path, MINIMAL + "cluster:\n  backend: slrum\n")


@pytest.mark.parametrize(("text", "message"), [
    ("jobqueue: {cores: 2}\n", r"cluster\.jobqueue \(line 7\): applies to backend slurm or "
                               r"pbs, not local; remove it, or set backend: slurm"),
    ("address: tcp://h:8786\nn_workers: 3\n",
     r"cluster\.n_workers \(line 8\): applies to backend local, not address"),
    ("backend: slurm\nkubernetes: {name: x}\n",
     r"cluster\.kubernetes \(line 8\): applies to backend kubernetes, not slurm"),
    ("backend: kubernetes\naddress: tcp://h:8786\n",
     r"cluster\.address \(line 8\): applies to backend address, not kubernetes"),
    ("backend: pbs\nmemory_limit: 4GiB\n",
     r"cluster\.memory_limit \(line 8\): applies to backend local, not pbs"),
    ("start_timeout: 60\n",
     r"cluster\.start_timeout \(line 7\): applies to backends whose workers start elsewhere"),
    ("backend: address\n",
     r"cluster\.address \(in cluster, line 6\): backend address needs the scheduler's "
     r"address, e.g\. address: tls://dask-scheduler:8786"),
])
def test_keys_of_another_backend_are_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cluster_file(tmp_path, text))


def test_tls_required_for_tls_addresses_and_refused_for_tcp(tmp_path, certs):
    with pytest.raises(ConfigError, match=r"cluster\.tls \(in cluster, line 6\): a tls:// "
                                          r"address needs the job's TLS files: tls: \{ca_file"):
        load_config(cluster_file(tmp_path, "address: tls://h:8786\n"))
    with pytest.raises(ConfigError, match=r"cluster\.tls \(line 8\): the address "
                                          r"'tcp://h:8786' is not encrypted"):
        load_config(cluster_file(tmp_path, "address: tcp://h:8786\n" + tls_section(certs["ca"])))
    config = load_config(cluster_file(tmp_path, "address: tls://h:8786\n"
                                      + tls_section(certs["ca"])))
    assert config.cluster.tls.ca_file == f"{certs['ca']}/ca.pem"
    assert JobConfig.model_validate(config.summary()) == config


def test_tls_cert_file_may_hold_the_key(tmp_path, certs):
    both = tmp_path / "client-and-key.pem"
    both.write_bytes((certs["ca"] / "client.pem").read_bytes()
                     + (certs["ca"] / "client-key.pem").read_bytes())
    text = (f"address: tls://h:8786\ntls:\n  ca_file: {certs['ca']}/ca.pem\n"
            f"  cert_file: {both}\n")
    assert load_config(cluster_file(tmp_path, text)).cluster.tls.key_file is None
    with pytest.raises(ConfigError, match=r"cluster\.tls\.cert_file \(line 10\): '.*client\.pem'"
                                          r" holds no PEM private key; give the job's key as "
                                          r"cluster\.tls\.key_file"):
        load_config(cluster_file(tmp_path, "address: tls://h:8786\n"
                                 + tls_section(certs["ca"], key=False)))


def _encrypted_key(path):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(b"passphrase"))


@pytest.mark.parametrize("problem", ["missing", "directory", "not pem", "other key",
                                     "encrypted", "ca is a key"])
def test_bad_tls_files_name_the_key_and_the_path(tmp_path, certs, problem):
    files = {"ca_file": certs["ca"] / "ca.pem", "cert_file": certs["ca"] / "client.pem",
             "key_file": certs["ca"] / "client-key.pem"}
    key, message = {
        "missing": ("key_file", r"no file '{path}' \(relative paths start at the working "
                                r"directory .*\); for throwaway certificates run python "
                                r"deploy/local/make-certs\.py deploy/local/tls"),
        "directory": ("ca_file", r"'{path}' is a directory; give the PEM file in it"),
        "not pem": ("cert_file", r"'{path}' holds no PEM certificate"),
        "other key": ("key_file", r"'{path}' is not the private key of cert_file '.*/"
                                  r"client\.pem'; give the key made with that certificate"),
        "encrypted": ("key_file", r"'{path}' is encrypted with a passphrase, which Dask cannot "
                                  r"ask for; decrypt it"),
        "ca is a key": ("ca_file", r"'{path}' holds no PEM certificate"),
    }[problem]
    if problem == "missing":
        files[key] = tmp_path / "absent.pem"
    elif problem == "directory":
        files[key] = tmp_path
    elif problem == "not pem":
        files[key] = tmp_path / "notes.txt"
        files[key].write_text("not a certificate\n")
    elif problem == "other key":
        files[key] = certs["other"] / "client-key.pem"
    elif problem == "encrypted":
        files[key] = tmp_path / "encrypted-key.pem"
        files[key].write_bytes(_encrypted_key(certs["ca"] / "client-key.pem"))
    else:
        files[key] = certs["ca"] / "client-key.pem"
    text = "address: tls://h:8786\ntls:\n" + "".join(f"  {k}: {v}\n" for k, v in files.items())
    line = 9 + list(files).index(key)
    with pytest.raises(ConfigError) as info:
        load_config(cluster_file(tmp_path, text))
    assert re.search(rf"cluster\.tls\.{key} \(line {line}\): "
                     + message.format(path=re.escape(str(files[key]))), str(info.value)), \
        str(info.value)
    assert "PRIVATE KEY-----\n" not in str(info.value)  # never a key's content


def test_unknown_key_in_a_cluster_section_suggests_the_key(tmp_path, certs):
    with pytest.raises(ConfigError, match=r"cluster\.tls\.keyfile \(line 11\): unknown key; "
                                          r"did you mean 'key_file'\? known keys: ca_file, "
                                          r"cert_file, key_file"):
        load_config(cluster_file(tmp_path, "address: tls://h:8786\n"
                                 + tls_section(certs["ca"], key=False) + "  keyfile: x\n"))


def test_slurm_and_pbs_jobqueue(tmp_path):
    config = load_config(cluster_file(tmp_path, """\
        backend: slurm
        jobqueue:
          queue: short
          cores: 4
          processes: 2
          memory: 8GiB
          walltime: "02:00:00"
          log_directory: logs
          job_extra_directives: ["--exclusive"]
          job_script_prologue: ["module load python", "export TOKEN=$TOKEN"]
          adapt: {minimum: 0, maximum: 10}
        start_timeout: 1 hour
        """))
    cluster = config.cluster
    assert (cluster.backend, cluster.jobqueue.queue, cluster.jobqueue.cores) == ("slurm",
                                                                                 "short", 4)
    assert (cluster.jobqueue.adapt.minimum, cluster.jobqueue.adapt.maximum) == (0, 10)
    assert cluster.start_timeout == 3600.0
    assert JobConfig.model_validate(config.summary()) == config
    pbs = load_config(cluster_file(tmp_path, "backend: pbs\n")).cluster
    assert pbs.jobqueue.jobs == 1 and pbs.jobqueue.memory == "2GiB"  # the defaults
    assert pbs.start_timeout is None


@pytest.mark.parametrize(("text", "message"), [
    ("adapt: {minimum: 3, maximum: 2}\n",
     r"cluster\.jobqueue\.adapt\.minimum \(line 9\): 3 is above maximum 2; need minimum <= "
     r"maximum"),
    ("adapt: {minimum: 0}\n",
     r"cluster\.jobqueue\.adapt\.maximum \(in cluster\.jobqueue\.adapt, line 9\): required key"),
    ("adapt: {minimum: -1, maximum: 2}\n",
     r"cluster\.jobqueue\.adapt\.minimum \(line 9\): Input should be greater than or equal "
     r"to 0"),
    ("jobs: 2\nadapt: {maximum: 4}\n",
     r"cluster\.jobqueue\.jobs \(line 9\): give jobs \(a fixed number\) or adapt \(bounds\), "
     r"not both"),
    ("cores: 2\nprocesses: 4\n",
     r"cluster\.jobqueue\.processes \(line 10\): 4 worker processes cannot share 2 cores"),
    ("walltime: 1h\n", r"cluster\.jobqueue\.walltime \(line 9\): a walltime looks like "
                       r"'01:00:00'"),
    ("memory: auto\n", r"cluster\.jobqueue\.memory \(line 9\): a job asks the scheduler for a "
                       r"memory size such as '2GiB', got 'auto'"),
    ("jobs: 0\n", r"cluster\.jobqueue\.jobs \(line 9\): Input should be greater than or equal "
                  r"to 1"),
])
def test_bad_jobqueue_keys(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cluster_file(tmp_path, "backend: slurm\njobqueue:\n"
                                 + textwrap.indent(text, "  ")))


def test_a_secret_in_a_job_script_is_refused_without_being_shown(tmp_path):
    with pytest.raises(ConfigError, match=r"cluster\.jobqueue\.job_script_prologue\.1 \(line "
                                          r"11\): sets AWS_SECRET_ACCESS_KEY to a value written "
                                          r"in the job file") as info:
        load_config(cluster_file(tmp_path, """\
            backend: slurm
            jobqueue:
              job_script_prologue:
                - module load python
                - export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENG
            """))
    assert "wJalrXUtnF" not in str(info.value)
    with pytest.raises(ConfigError, match=r"cluster\.jobqueue\.job_extra_directives\.0 \(line "
                                          r"\d+\): sets DB_PASSWORD to a value written in the "
                                          r"job file.*--export=ALL,DB_PASSWORD\)") as info:
        load_config(cluster_file(tmp_path, """\
            backend: slurm
            jobqueue:
              job_extra_directives: ["--export=ALL,DB_PASSWORD=hunter2secret", "--qos=low"]
            """))
    assert "hunter2secret" not in str(info.value)
    load_config(cluster_file(tmp_path, """\
        backend: slurm
        jobqueue:
          job_extra_directives: ["--export=ALL,DB_PASSWORD", "--qos=low", "--comment=a=b"]
        """))


def test_kubernetes(tmp_path):
    config = load_config(cluster_file(tmp_path, """\
        backend: kubernetes
        kubernetes:
          name: nightly-gmm
          namespace: analytics
          image: registry.example.org/daskgmm:1.2
          resources: {limits: {memory: 4Gi, cpu: 1}}
          env:
            OMP_NUM_THREADS: 1
            AWS_SECRET_ACCESS_KEY: {secret: s3-credentials, key: secret}
          adapt: {minimum: 1, maximum: 8}
        dashboard_url: https://dask.example.org/status
        """))
    kube = config.cluster.kubernetes
    assert (kube.name, kube.namespace, kube.existing) == ("nightly-gmm", "analytics", False)
    assert kube.env["OMP_NUM_THREADS"] == "1"
    assert kube.env["AWS_SECRET_ACCESS_KEY"].secret == "s3-credentials"
    assert kube.resources == {"limits": {"memory": "4Gi", "cpu": 1}}
    assert config.cluster.dashboard_url == "https://dask.example.org/status"
    assert JobConfig.model_validate(config.summary()) == config
    existing = load_config(cluster_file(tmp_path, "backend: kubernetes\nkubernetes:\n"
                                                  "  existing: true\n"))
    assert existing.cluster.kubernetes.name == "daskgmm"
    assert JobConfig.model_validate(existing.summary()) == existing
    default = load_config(cluster_file(tmp_path, "backend: kubernetes\n"))
    assert default.cluster.kubernetes.n_workers == 2


@pytest.mark.parametrize(("text", "message"), [
    ("name: Nightly_GMM\n", r"cluster\.kubernetes\.name \(line 9\): a Kubernetes name is "
                            r"lowercase letters, digits and '-'.*got 'Nightly_GMM'"),
    ("existing: true\nimage: x:1\n",
     r"cluster\.kubernetes\.image \(line 10\): applies to a DaskCluster the job creates; "
     r"with existing: true the job uses DaskCluster 'daskgmm' as it is"),
    ("n_workers: 3\nadapt: {maximum: 5}\n",
     r"cluster\.kubernetes\.n_workers \(line 9\): give n_workers \(a fixed number\) or adapt"),
    ("resources: {limts: {memory: 2Gi}}\n",
     r"cluster\.kubernetes\.resources\.limts"),
])
def test_bad_kubernetes_keys(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cluster_file(tmp_path, "backend: kubernetes\nkubernetes:\n"
                                 + textwrap.indent(text, "  ")))


def test_an_inline_kubernetes_secret_is_refused_without_being_shown(tmp_path):
    with pytest.raises(ConfigError, match=r"cluster\.kubernetes\.env\.AWS_SECRET_ACCESS_KEY "
                                          r"\(line 10\): inline secret; store it in a "
                                          r"Kubernetes Secret and write AWS_SECRET_ACCESS_KEY: "
                                          r"\{secret: SECRET_NAME, key: KEY\}") as info:
        load_config(cluster_file(tmp_path, "backend: kubernetes\nkubernetes:\n  env:\n"
                                           "    AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMIK7MDENG\n"))
    assert "wJalrXUtnF" not in str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    ("address: tcp://h:8786\ndashboard_url: h:8787\n",
     r"cluster\.dashboard_url \(line 8\): a dashboard link looks like "
     r"'https://dask\.example\.org/status', got 'h:8787'"),
    ("address: tcp://h:8786\ndashboard_url: https://user:SECRET@h/status\n",
     r"cluster\.dashboard_url \(line 8\): credentials inside a URL are refused"),
    ("address: tcp://h:8786\nstart_timeout: soon\n",
     r"cluster\.start_timeout \(line 8\): cannot read 'soon' as a duration; write for example "
     r"600, '90s', '10 minutes' or '1h'"),
    ("address: tcp://h:8786\nstart_timeout: 0\n",
     r"cluster\.start_timeout \(line 8\): a duration is > 0, got 0"),
])
def test_dashboard_url_and_start_timeout(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(cluster_file(tmp_path, text))
    assert "SECRET" not in str(info.value)

"""Configuration of one nightly job: a YAML file validated into a :class:`JobConfig`.

    from daskgmm_pipelines.config import load_config, resolve_storage_options

    config = load_config("configs/demo.yaml")
    config.model.n_components          # [1, 2, ..., 8]
    options = resolve_storage_options(config.source.storage_options, "source.storage_options")

A job file has the sections ``source``, ``model``, ``anomaly``, ``outputs``, ``cluster``,
``schedule`` and ``nightly`` (``configs/s3-example.yaml`` explains every key). Only
``name``, ``source.uri`` and ``outputs.model_store`` are required; everything else has a
default. Unknown keys are errors, so a misspelt key never silently falls back to its default.

Paths. Relative paths in ``source.uri``, ``outputs.scores`` and ``outputs.model_store`` are
kept as written and so are relative to the working directory of the process that runs
the job. Prefect deployments of this project run from the project root, hence
``demo-data/demo.zarr`` in ``configs/demo.yaml``.

Secrets. ``storage_options`` (fsspec options) hold plain values, but a secret is written as
a reference to an environment variable, ``secret: {env: AWS_SECRET_ACCESS_KEY}``, at any
depth. A string under a key that looks like a secret (its name contains key, secret,
password, token, credential or session) is rejected. A :class:`JobConfig` only ever holds
the references, so its repr, ``model_dump()`` and :meth:`JobConfig.summary` can be logged;
:func:`resolve_storage_options` reads the variables when the job opens its storage.

Errors. :func:`load_config` raises :class:`ConfigError` listing every problem, one per
line, each with its dotted key and the line of the file where that key is, e.g.::

    configs/demo.yaml: model.covariance_types.1 (line 12): Input should be 'full', 'tied',
    'diag' or 'spherical', got 'fulll'
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import typing
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from dask.utils import parse_bytes
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from daskgmm.covariance import COVARIANCE_TYPES
from daskgmm.validation import INIT_PARAMS

__all__ = [
    "AdaptConfig",
    "AnomalyConfig",
    "BACKENDS",
    "ClusterConfig",
    "ConfigError",
    "JobConfig",
    "JobqueueConfig",
    "KubernetesConfig",
    "ModelConfig",
    "NightlyConfig",
    "OutputsConfig",
    "ScheduleConfig",
    "SecretReference",
    "SourceConfig",
    "TLSConfig",
    "load_config",
    "resolve_storage_options",
]


class ConfigError(ValueError):
    """A job configuration that cannot be read, or a secret that cannot be resolved."""


# --- problems located below the value being validated -------------------------------------

def _dotted(path) -> str:
    return ".".join(str(part) for part in path)


def _located(problems) -> PydanticCustomError:
    """A validation error for keys below the value being validated.

    ``problems`` is a list of ``(key path relative to that value, message)``. pydantic's
    own message lists them all; :func:`load_config` reports each at its own key and line.
    """
    text = "; ".join(f"{_dotted(key)}: {message}" for key, message in problems)
    return PydanticCustomError("job_config", text, {"problems": problems})


def _unique(values: list) -> list:
    repeated = sorted({value for i, value in enumerate(values) if value in values[:i]})
    if repeated:
        raise ValueError(f"{', '.join(map(repr, repeated))} listed more than once")
    return values


def _no_bool(value):
    # YAML reads yes/no/on/off/true/false as booleans, which pydantic would take as 1 or 0.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
# YAML reads .inf and .nan as numbers: no setting of a job takes them
Float = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]

_URL_CREDENTIALS = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]+@")


def _no_credentials(value):
    """A path or URL without ``user:password@`` (it would reach logs and model info)."""
    if isinstance(value, str) and _URL_CREDENTIALS.match(value):
        raise ValueError(
            "credentials inside a URL are refused (they would reach logs, reports and the "
            "model's info.json); put them in storage_options as {env: VARIABLE} references "
            "and give the URL without them"
        )
    return value


Location = Annotated[str, Field(min_length=1), AfterValidator(_no_credentials)]
# the library's names: a new covariance type or initialisation is accepted here too
CovarianceType = Literal[COVARIANCE_TYPES]
InitParams = Literal[INIT_PARAMS]


# --- storage options and secrets ----------------------------------------------------------

_SECRET_WORDS = re.compile("key|secret|password|token|credential|session", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# s3fs's option names and the variables AWS tools read them from
_USUAL_VARIABLE = {
    "key": "AWS_ACCESS_KEY_ID",
    "secret": "AWS_SECRET_ACCESS_KEY",
    "token": "AWS_SESSION_TOKEN",
}


def _env_name(value) -> str | None:
    """NAME when ``value`` is an environment reference ``{env: NAME}``, else None."""
    if isinstance(value, Mapping) and set(value) == {"env"} and isinstance(value["env"], str):
        return value["env"]
    return None


def _storage_option_problems(value, path=(), secret_like=False) -> list:
    """``(key path, message)`` for each inline secret or malformed ``{env: NAME}``."""
    if isinstance(value, Mapping):
        if "env" in value:
            return _env_reference_problems(value, path)
        problems = []
        for key, item in value.items():
            flagged = _SECRET_WORDS.search(str(key)) is not None
            problems += _storage_option_problems(item, (*path, key), flagged)
        return problems
    if isinstance(value, list):
        problems = []
        for i, item in enumerate(value):
            problems += _storage_option_problems(item, (*path, i), secret_like)
        return problems
    if isinstance(value, str) and _URL_CREDENTIALS.match(value):
        return [(path, "credentials inside a URL; give the URL without them and the "
                       "credentials as {env: VARIABLE} references")]
    if secret_like and isinstance(value, str):
        # never quote the value: this message ends up in logs
        leaf = next(str(part) for part in reversed(path) if isinstance(part, str))
        variable = _USUAL_VARIABLE.get(leaf, re.sub(r"\W", "_", leaf).upper())
        return [(path, f"inline secret; write it as {{env: {variable}}} and set the "
                       f"environment variable {variable} where the job runs")]
    return []


def _env_reference_problems(value, path) -> list:
    if set(value) != {"env"}:
        keys = ", ".join(map(str, value))
        return [(path, f"an environment reference has the single key 'env', as in "
                       f"{{env: AWS_SECRET_ACCESS_KEY}}; found keys {keys}")]
    if not isinstance(value["env"], str) or not _ENV_NAME.fullmatch(value["env"]):
        # the value is not quoted: it may be a secret pasted in place of a variable name
        return [(path, "{env: NAME} must name an environment variable (letters, digits "
                       "and _, not starting with a digit), as in {env: AWS_SECRET_ACCESS_KEY}")]
    return []


def _check_storage_options(options):
    if options is not None:
        problems = _storage_option_problems(options)
        if problems:
            raise _located(problems)
    return options


StorageOptions = Annotated[dict[str, Any], AfterValidator(_check_storage_options)]


def resolve_storage_options(
    options: Mapping[str, Any], where: str = "storage_options"
) -> dict[str, Any]:
    """A copy of ``options`` with every ``{env: NAME}`` replaced by ``os.environ[NAME]``.

    Parameters
    ----------
    options : mapping
        fsspec storage options as held by a :class:`JobConfig`, e.g.
        ``config.source.storage_options``; it is not modified.
    where : str, default='storage_options'
        Dotted key of ``options`` in the job file, used in error messages.

    Raises
    ------
    ConfigError
        Naming every unset variable and the key that refers to it.
    """
    missing = []

    def resolve(value, path):
        name = _env_name(value)
        if name is not None:
            if name not in os.environ:
                missing.append((path, name))
            return os.environ.get(name)
        if isinstance(value, Mapping):
            return {key: resolve(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [resolve(item, (*path, i)) for i, item in enumerate(value)]
        return value

    resolved = resolve(options, ())
    if missing:
        raise ConfigError("\n".join(
            f"{_dotted((where, *path))}: environment variable {name} is not set; set it "
            f"where the job runs (export {name}=...) or in the deployment's job variables"
            for path, name in missing
        ))
    return resolved


# --- cron -----------------------------------------------------------------------------------

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_FIELDS = (  # name, lowest, highest, names of values
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {name: i for i, name in enumerate(_MONTHS, start=1)}),
    ("day of week", 0, 7, {name: i for i, name in enumerate(_WEEKDAYS)}),  # 0 and 7: Sunday
)
_CRON_PART = re.compile(r"(?P<span>\*|\w+(?:-\w+)?)(?:/(?P<step>\d+))?")


def _check_cron(expression: str) -> str:
    """Check a 5-field cron expression: values, names, ranges ``a-b``, lists, steps ``/n``.

    The same rules as the cron schedules of Prefect deployments (croniter) without
    croniter's extensions (``L``, ``W``, ``#``, ``?``, hashed values), done here so that
    a job file is checked the same way wherever it is loaded.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)} in {expression!r}; '0 2 * * *' runs every day at 02:00"
        )
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            match = _CRON_PART.fullmatch(part)
            if match is None:
                raise ValueError(
                    f"{name} field {text!r} of {expression!r}: cannot read {part!r}; write "
                    f"'*', a value, a range a-b, a list a,b or a step such as */15"
                )
            if match["step"] is not None and int(match["step"]) == 0:
                raise ValueError(f"{name} field {text!r} of {expression!r}: a step is >= 1")
            if match["span"] != "*":
                span = [_cron_value(value, name, low, high, names, expression)
                        for value in match["span"].split("-")]
                if name == "day of week" and len(span) == 2 and span[1] == 0:
                    span[1] = 7  # mon-sun
                if span[0] > span[-1]:
                    raise ValueError(
                        f"{name} field {text!r} of {expression!r}: the range "
                        f"{match['span']!r} runs backwards; split it, as in 22-23,0-2"
                    )
    return expression


def _cron_value(text, name, low, high, names, expression) -> int:
    if text.isascii() and text.isdigit() and low <= int(text) <= high:
        return int(text)
    if text.lower() in names:
        return names[text.lower()]
    spelled = f" or a name such as {next(iter(names))!r}" if names else ""
    raise ValueError(
        f"{name} field of {expression!r}: {text!r} is not in {low}-{high}{spelled}"
    )


# --- sections -------------------------------------------------------------------------------

class _Section(BaseModel):
    # hide_input_in_errors: a ValidationError printed anywhere must not show a secret
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class SourceConfig(_Section):
    """The data to fit and score: a Zarr array or group, or a Parquet dataset."""

    uri: Location
    format: Literal["auto", "zarr", "parquet"] = "auto"
    array_name: str | None = None
    columns: Annotated[list[str], AfterValidator(_unique)] | None = Field(None, min_length=1)
    id_columns: Annotated[list[str], AfterValidator(_unique)] = []
    storage_options: StorageOptions = {}
    missing_chunks: Literal["raise", "fill"] = "raise"
    # a numeric column of each row's sample weight (Parquet): fit, selection and the
    # threshold weigh the rows by it; never a feature
    weight_column: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _check_format_keys(self):
        problems = []
        if self.format == "zarr" or (self.is_zarr and self.weight_column is not None):
            problems += [((key,), "applies to Parquet sources only; a Zarr source reads the "
                                  "array given by array_name")
                         for key in ("columns", "id_columns", "weight_column")
                         if getattr(self, key)]
        if self.format == "parquet" and self.array_name is not None:
            problems.append((("array_name",), "applies to Zarr groups only; a Parquet "
                                              "source reads columns"))
        if self.format == "parquet" and self.columns is None:
            problems.append((("columns",), "a Parquet source names its feature columns "
                                           "(e.g. columns: [f0, f1]) so that an id, a "
                                           "label or a column added upstream never "
                                           "becomes a feature"))
        both = sorted(set(self.columns or ()) & set(self.id_columns))
        if both:
            problems.append((("id_columns",), f"{', '.join(both)} also in columns; an id "
                                              "column is copied next to the scores, not "
                                              "used as a feature"))
        if self.weight_column is not None and self.weight_column in (self.columns or ()):
            problems.append((("weight_column",), f"{self.weight_column} also in columns; "
                                                 "a row's sample weight is not a feature"))
        if problems:
            raise _located(problems)
        return self

    @property
    def is_zarr(self) -> bool:
        """Whether the source is Zarr by its ``format`` or, for 'auto', a ``.zarr`` uri."""
        return self.format == "zarr" or (
            self.format == "auto" and self.uri.rstrip("/").lower().endswith(".zarr")
        )


def _component_counts(value):
    """``n_components`` as a list: an int, a list of ints or ``{min: a, max: b}``."""
    if isinstance(value, Mapping):
        if set(value) != {"min", "max"}:
            raise ValueError(f"a range of component counts is written {{min: 1, max: 10}}; "
                             f"got the keys {', '.join(map(str, value))}")
        low, high = value["min"], value["max"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
            raise ValueError(f"min and max are ints, got min={low!r}, max={high!r}")
        if not 1 <= low <= high:
            raise ValueError(f"need 1 <= min <= max, got min={low}, max={high}")
        return list(range(low, high + 1))
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"need n_components >= 1, got {value}")
        return [value]
    if isinstance(value, list):
        return value
    raise ValueError(f"expected an int, a list of ints or {{min: 1, max: 10}}, got {value!r}")


ComponentCounts = Annotated[
    list[Annotated[Int, Field(ge=1)]],
    BeforeValidator(_component_counts),
    AfterValidator(lambda counts: sorted(_unique(counts))),
    Field(min_length=1),
]


class ModelConfig(_Section):
    """The candidate mixtures and how EM fits them; the criterion picks one."""

    n_components: ComponentCounts = list(range(1, 11))
    covariance_types: Annotated[list[CovarianceType], AfterValidator(_unique)] = Field(
        ["full"], min_length=1
    )
    criterion: Literal["bic", "aic"] = "bic"
    n_init: Int = Field(1, ge=1)
    tol: Float = Field(1e-3, gt=0)
    max_iter: Int = Field(100, ge=1)
    reg_covar: Float = Field(1e-6, ge=0)
    seed: Int | None = Field(0, ge=0)
    init: InitParams = "kmeans"
    # rows holding NaN: 'raise' (fail naming the row), 'omit' (left out, scored NaN),
    # 'marginalize' (EM and scores over each row's observed features)
    nan_policy: Literal["raise", "omit", "marginalize"] = "raise"


class AnomalyConfig(_Section):
    """Which rows are anomalies: the ``contamination`` fraction with the lowest density, or
    the rows below a fixed log-density ``threshold``.

    Exactly one of the two is set after validation: giving ``threshold`` sets
    ``contamination`` to None.
    """

    contamination: Float | None = Field(0.01, gt=0, le=0.5)
    threshold: Float | None = None

    @model_validator(mode="after")
    def _one_rule(self):
        if self.threshold is not None:
            if "contamination" in self.model_fields_set and self.contamination is not None:
                raise _located([(("threshold",), "give contamination or threshold, not both; "
                                                  "threshold is a fixed log-density cut-off "
                                                  "and contamination a fraction of the rows")])
            self.contamination = None
        elif self.contamination is None:
            raise _located([(("contamination",), "null needs a threshold; give a fraction "
                                                  "in (0, 0.5] or a threshold")])
        return self


class OutputsConfig(_Section):
    """Where scores, model versions, checkpoints and reports go.

    ``format`` is the scores' format: ``auto`` (that of the source: Zarr for Zarr, else
    Parquet), ``parquet``, ``zarr`` or ``delta`` (a Delta Lake table, one commit per run;
    needs ``scores``). ``storage_options`` defaults to the source's (filled in by
    :class:`JobConfig`).
    """

    scores: Location | None = None
    format: Literal["auto", "parquet", "zarr", "delta"] = "auto"
    model_store: Location
    storage_options: StorageOptions | None = None


def _check_memory_limit(value):
    if value is None or value == "auto":
        return value
    try:
        if isinstance(value, str) and value.strip() and parse_bytes(value) > 0:
            return value
    except ValueError:
        pass
    raise ValueError(
        f"cannot read {value!r} as a memory size; write for example '2GiB', '500MB', "
        f"'auto' (a share of this machine's memory) or null (no limit)"
    )


def _check_address(value):
    _no_credentials(value)
    if value is not None and not re.fullmatch(r"(tcp|tls|ucx|inproc|ws|wss)://\S+", value):
        raise ValueError(
            f"a Dask scheduler address looks like 'tcp://dask-scheduler:8786', got {value!r} "
            f"(the dashboard's http:// address does not work); null starts a LocalCluster"
        )
    return value


# --- the cluster ----------------------------------------------------------------------------

BACKENDS = ("local", "address", "slurm", "pbs", "kubernetes")
# backend: (the module it imports, its distribution, the extra of daskgmm that installs it)
BACKEND_LIBRARIES = {
    "slurm": ("dask_jobqueue", "dask-jobqueue", "slurm"),
    "pbs": ("dask_jobqueue", "dask-jobqueue", "slurm"),
    "kubernetes": ("dask_kubernetes.operator", "dask-kubernetes", "kubernetes"),
}
# the keys of ClusterConfig that belong to one backend, and the backends they belong to
_BACKEND_KEYS = {
    "n_workers": ("local",), "threads_per_worker": ("local",), "memory_limit": ("local",),
    "processes": ("local",), "address": ("address",), "tls": ("address",),
    "jobqueue": ("slurm", "pbs"), "kubernetes": ("kubernetes",),
}
_MAX_PEM_BYTES = 1024 * 1024
_MAKE_CERTS = "python deploy/local/make-certs.py deploy/local/tls"


def _readable_file(value: str) -> str:
    """A path this process can read (TLS files are read when the job connects: a wrong
    path is better found when the job file is loaded)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected the path of a PEM file")
    try:
        with open(value, "rb") as file:
            if len(file.read(_MAX_PEM_BYTES + 1)) > _MAX_PEM_BYTES:
                raise ValueError(f"{value!r} is larger than {_MAX_PEM_BYTES:,} bytes: not a "
                                 f"PEM certificate or key")
    except FileNotFoundError:
        raise ValueError(f"no file {value!r} (relative paths start at the working directory "
                         f"{os.getcwd()}); for throwaway certificates run "
                         f"{_MAKE_CERTS}") from None
    except IsADirectoryError:
        raise ValueError(f"{value!r} is a directory; give the PEM file in it") from None
    except PermissionError:
        raise ValueError(f"{value!r} cannot be read by this process (permission denied); "
                         f"let the job's user read it (chmod/chown)") from None
    except OSError as exc:
        raise ValueError(f"cannot read {value!r}: {exc.strerror or exc}") from None
    return value


PemFile = Annotated[str, AfterValidator(_readable_file)]


def _pem_holds(path: str, marker: bytes) -> bool:
    with open(path, "rb") as file:
        return marker in file.read(_MAX_PEM_BYTES)


def _no_password():
    raise ValueError("encrypted")


class TLSConfig(_Section):
    """The job's TLS files for a ``tls://`` scheduler: the CA that signed the cluster's
    certificates, and the job's own certificate and private key (PEM). Checked when the
    job file is loaded: readable, PEM, the key belongs to the certificate."""

    ca_file: PemFile
    cert_file: PemFile
    key_file: PemFile | None = None

    @model_validator(mode="after")
    def _check_pem(self):
        import ssl

        problems = []
        for key in ("ca_file", "cert_file"):
            if not _pem_holds(getattr(self, key), b"-----BEGIN CERTIFICATE-----"):
                problems.append(((key,), f"{getattr(self, key)!r} holds no PEM certificate "
                                         f"(-----BEGIN CERTIFICATE-----)"))
        key_key, key_path = ("key_file", self.key_file) if self.key_file else (
            "cert_file", self.cert_file)
        if not _pem_holds(key_path, b"PRIVATE KEY-----"):
            problems.append(((key_key,), f"{key_path!r} holds no PEM private key" + (
                "" if self.key_file else "; give the job's key as cluster.tls.key_file")))
        if problems:
            raise _located(problems)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(self.ca_file)
        except ssl.SSLError as exc:
            problems.append((("ca_file",), f"{self.ca_file!r} cannot be read as CA "
                                           f"certificates: {exc.reason or exc}"))
        try:
            context.load_cert_chain(self.cert_file, self.key_file, password=_no_password)
        except ValueError:  # the callback: a passphrase would be asked on the terminal
            problems.append(((key_key,), f"{key_path!r} is encrypted with a passphrase, "
                                         f"which Dask cannot ask for; decrypt it (openssl "
                                         f"pkey -in KEY -out KEY.plain) and keep it readable "
                                         f"by the job's user only"))
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                text = (f"{key_path!r} is not the private key of cert_file "
                        f"{self.cert_file!r}; give the key made with that certificate")
            else:
                text = (f"{self.cert_file!r} and {key_path!r} cannot be used as a "
                        f"certificate and its key ({exc.reason or exc})")
            problems.append(((key_key,), text))
        if problems:
            raise _located(problems)
        return self


class AdaptConfig(_Section):
    """Adaptive scaling bounds: the cluster grows with the work queued and shrinks when
    workers idle, between ``minimum`` and ``maximum`` (jobs, or Kubernetes workers)."""

    minimum: Int = Field(0, ge=0)
    maximum: Int = Field(ge=1)

    @model_validator(mode="after")
    def _bounds(self):
        if self.minimum > self.maximum:
            raise _located([(("minimum",), f"{self.minimum} is above maximum "
                                           f"{self.maximum}; need minimum <= maximum")])
        return self


def _check_job_memory(value):
    if value is None or value == "auto":
        raise ValueError(f"a job asks the scheduler for a memory size such as '2GiB', got "
                         f"{value!r}")
    return _check_memory_limit(value)


_WALLTIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}")
_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?(?P<name>[A-Za-z_]\w*)=(?P<value>\S.*)")


def _check_walltime(value: str) -> str:
    if not _WALLTIME.fullmatch(value):
        raise ValueError(f"a walltime looks like '01:00:00' (hours:minutes:seconds) or "
                         f"'1-00:00:00' (days-hours:...), got {value!r}")
    return value


def _check_prologue(lines: list[str]) -> list[str]:
    """No secret written into a job script (it lands in the queue's spool and job logs)."""
    problems = []
    for i, line in enumerate(lines):
        match = _ASSIGNMENT.match(line)
        if (match and _SECRET_WORDS.search(match["name"])
                and not match["value"].startswith(("$", '"$'))):
            # never quote the line: it holds the secret
            problems.append(((i,), f"sets {match['name']} to a value written in the job file; "
                                   f"job scripts are kept by the queue: export it where the "
                                   f"job runs and write {match['name']}=${match['name']}, "
                                   f"or read it from a file readable by the job's user only"))
    if problems:
        raise _located(problems)
    return lines


_DIRECTIVE_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z_]\w*)=(?P<value>[^,\s]+)")


def _check_directives(lines: list[str]) -> list[str]:
    """No secret in a directive either (``--export=ALL,TOKEN=...``): the same reasons."""
    problems = []
    for i, line in enumerate(lines):
        for match in _DIRECTIVE_ASSIGNMENT.finditer(line):
            if _SECRET_WORDS.search(match["name"]) and not match["value"].startswith("$"):
                problems.append(((i,), f"sets {match['name']} to a value written in the job "
                                       f"file; job scripts are kept by the queue: export it "
                                       f"where the job is submitted and pass it by name "
                                       f"(--export=ALL,{match['name']}), or read it from a "
                                       f"file readable by the job's user only"))
    if problems:
        raise _located(problems)
    return lines


class JobqueueConfig(_Section):
    """Batch jobs that run the Dask workers (dask-jobqueue's SLURMCluster or PBSCluster);
    the scheduler runs in the job's own process. Unset keys take dask-jobqueue's
    defaults (and its ``jobqueue.slurm`` / ``jobqueue.pbs`` dask config)."""

    queue: str | None = None
    account: str | None = None
    cores: Int = Field(1, ge=1)
    processes: Int = Field(1, ge=1)
    memory: Annotated[str, BeforeValidator(_check_job_memory)] = "2GiB"
    walltime: Annotated[str, AfterValidator(_check_walltime)] = "01:00:00"
    interface: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = None
    job_extra_directives: Annotated[list[str], AfterValidator(_check_directives)] = []
    job_script_prologue: Annotated[list[str], AfterValidator(_check_prologue)] = []
    jobs: Int = Field(1, ge=1)
    adapt: AdaptConfig | None = None

    @model_validator(mode="after")
    def _check_jobs(self):
        problems = []
        if self.adapt is not None and "jobs" in self.model_fields_set:
            problems.append((("jobs",), "give jobs (a fixed number) or adapt (bounds), not "
                                        "both"))
        if self.processes > self.cores:
            problems.append((("processes",), f"{self.processes} worker processes cannot share "
                                             f"{self.cores} cores (each needs a thread); "
                                             f"need processes <= cores"))
        if problems:
            raise _located(problems)
        return self

    @model_serializer(mode="wrap")
    def _without_unused(self, handler):
        data = handler(self)  # jobs is not used with adapt: the dump validates again
        return {key: value for key, value in data.items()
                if not (key == "jobs" and self.adapt is not None)}


_ENV_VARIABLE = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _dns_label(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?", value):
        raise ValueError(f"a Kubernetes name is lowercase letters, digits and '-', starts "
                         f"and ends with a letter or digit, at most 50 characters; got "
                         f"{value!r}")
    return value


KubernetesName = Annotated[str, AfterValidator(_dns_label)]


class SecretReference(_Section):
    """An environment variable taken from a key of a Kubernetes Secret."""

    secret: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$")


def _scalar_text(value):
    # YAML reads 1, 2.5 as numbers: an environment value is text
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _check_env(env: dict) -> dict:
    problems = [((name,), f"inline secret; store it in a Kubernetes Secret and write "
                          f"{name}: {{secret: SECRET_NAME, key: KEY}}")
                for name, value in env.items()
                if isinstance(value, str) and _SECRET_WORDS.search(name)]
    if problems:
        raise _located(problems)
    return env


EnvValue = Annotated[str, BeforeValidator(_scalar_text)] | SecretReference


class KubernetesConfig(_Section):
    """A DaskCluster of the dask-kubernetes operator: created for the job (and deleted
    after it), or an ``existing`` one the job connects to by name and leaves running."""

    name: KubernetesName = "daskgmm"
    namespace: KubernetesName | None = None
    existing: bool = False
    image: str = Field("ghcr.io/example/daskgmm:latest", min_length=1)
    n_workers: Int = Field(2, ge=1)
    resources: dict[Literal["limits", "requests"], dict[str, str | Int | Float]] = {}
    env: Annotated[dict[Annotated[str, Field(pattern=_ENV_VARIABLE)], EnvValue],
                   AfterValidator(_check_env)] = {}
    adapt: AdaptConfig | None = None

    @model_validator(mode="after")
    def _check_existing(self):
        problems = []
        if self.existing:
            problems += [((key,), f"applies to a DaskCluster the job creates; with existing: "
                                  f"true the job uses DaskCluster {self.name!r} as it is "
                                  f"(set this in its manifest)")
                         for key in ("image", "n_workers", "resources", "env")
                         if key in self.model_fields_set]
        elif self.adapt is not None and "n_workers" in self.model_fields_set:
            problems.append((("n_workers",), "give n_workers (a fixed number) or adapt "
                                             "(bounds), not both"))
        if problems:
            raise _located(problems)
        return self

    @model_serializer(mode="wrap")
    def _without_unused(self, handler):
        data = handler(self)  # keys not used stay out of the dump, which validates again
        unused = ({"image", "n_workers", "resources", "env"} if self.existing
                  else {"n_workers"} if self.adapt is not None else set())
        return {key: value for key, value in data.items() if key not in unused}


def _check_dashboard_url(value):
    _no_credentials(value)
    if value is not None and not re.fullmatch(r"https?://\S+", value):
        raise ValueError(f"a dashboard link looks like 'https://dask.example.org/status', "
                         f"got {value!r}")
    return value


def _seconds(value):
    """A duration: seconds as a number, or text such as '90s', '10 minutes', '1h'."""
    from dask.utils import parse_timedelta

    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '10 minutes', got {value!r}")
    try:
        seconds = parse_timedelta(value, default="seconds")
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"cannot read {value!r} as a duration; write for example 600, "
                         f"'90s', '10 minutes' or '1h'") from None
    if not (seconds is not None and 0 < seconds < float("inf")):
        raise ValueError(f"a duration is > 0, got {value!r}")
    return float(seconds)


class ClusterConfig(_Section):
    """The Dask cluster the job runs on, chosen by ``backend``:

    - ``local`` (the default without ``address``): a LocalCluster in the job's process,
      ``n_workers`` workers of ``threads_per_worker`` threads and ``memory_limit`` each,
      worker processes or (``processes: false``) threads;
    - ``address`` (the default with ``address``): an existing scheduler, over TLS with
      the ``tls`` files for a ``tls://`` address;
    - ``slurm`` or ``pbs``: workers as batch jobs (``jobqueue``), extra ``daskgmm[slurm]``;
    - ``kubernetes``: a DaskCluster of the dask-kubernetes operator (``kubernetes``),
      extra ``daskgmm[kubernetes]``.

    ``dashboard_url`` replaces the dashboard link the job logs; ``start_timeout`` (not for
    ``local``) bounds the wait for the first worker: 2 minutes for ``address``, 30 for
    ``slurm``/``pbs`` (queued jobs), 10 for ``kubernetes`` (pulling images).
    Keys of a backend other than the chosen one are errors.
    """

    backend: Literal[BACKENDS] = "local"
    n_workers: Int = Field(2, ge=1)
    threads_per_worker: Int = Field(1, ge=1)
    memory_limit: Annotated[str | None, BeforeValidator(_check_memory_limit)] = "2GiB"
    processes: bool = True
    address: Annotated[str | None, AfterValidator(_check_address)] = None
    tls: TLSConfig | None = None
    jobqueue: JobqueueConfig | None = None
    kubernetes: KubernetesConfig | None = None
    dashboard_url: Annotated[str | None, AfterValidator(_check_dashboard_url)] = None
    start_timeout: Annotated[float | None, BeforeValidator(_seconds)] = None

    @model_validator(mode="after")
    def _check_backend(self):
        given = {key for key in self.model_fields_set if getattr(self, key) is not None}
        if "backend" not in self.model_fields_set:
            self.backend = "address" if self.address is not None else "local"
        problems = [((key,), f"applies to backend {' or '.join(backends)}, not "
                             f"{self.backend}; remove it, or set backend: {backends[0]}")
                    for key, backends in _BACKEND_KEYS.items()
                    if key in given and self.backend not in backends]
        if self.backend == "local" and "start_timeout" in given:
            problems.append((("start_timeout",), "applies to backends whose workers start "
                                                 "elsewhere, not local"))
        if self.backend == "address":
            problems += self._address_problems()
        if self.backend in ("slurm", "pbs") and self.jobqueue is None:
            self.jobqueue = JobqueueConfig()
        if self.backend == "kubernetes" and self.kubernetes is None:
            self.kubernetes = KubernetesConfig()
        if self.backend in BACKEND_LIBRARIES and not problems:
            problems += _missing_library(self.backend)
        if problems:
            raise _located(problems)
        return self

    @property
    def library(self) -> tuple[str, str, str] | None:
        """The backend's library: (module to import, distribution, daskgmm's extra that
        installs it), or None for the backends distributed covers alone."""
        return BACKEND_LIBRARIES.get(self.backend)

    @model_serializer(mode="wrap")
    def _only_this_backend(self, handler):
        """The keys of the chosen backend and the common ones: the dump (reports, a
        model's info.json) reads like a job file and validates again."""
        data = handler(self)
        return {key: value for key, value in data.items()
                if self.backend in _BACKEND_KEYS.get(key, (self.backend,))}

    def _address_problems(self) -> list:
        if self.address is None:
            return [(("address",), "backend address needs the scheduler's address, e.g. "
                                   "address: tls://dask-scheduler:8786")]
        secure = self.address.startswith(("tls://", "wss://"))
        if secure and self.tls is None:
            return [(("tls",), f"a {self.address.split('://')[0]}:// address needs the job's "
                               f"TLS files: tls: {{ca_file: ..., cert_file: ..., key_file: "
                               f"...}} (throwaway ones: {_MAKE_CERTS})")]
        if not secure and self.tls is not None:
            return [(("tls",), f"the address {self.address!r} is not encrypted, so the TLS "
                               f"files would not be used; write the address as tls://...")]
        return []


def _missing_library(backend) -> list:
    import importlib.util

    module, distribution, extra = BACKEND_LIBRARIES[backend]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return []
    return [(("backend",), f"backend {backend} needs {distribution}, which is not installed "
                           f"in this environment; install it with pip install "
                           f"'daskgmm[{extra}]'")]


def _check_timezone(name):
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as 'UTC' or "
                         f"'Europe/Paris'") from None
    return name


class ScheduleConfig(_Section):
    """When the nightly run starts."""

    cron: Annotated[str, AfterValidator(_check_cron)] = "0 2 * * *"
    timezone: Annotated[str, AfterValidator(_check_timezone)] = "UTC"


class NightlyConfig(_Section):
    """How the nightly run keeps the model current."""

    warm_start: bool = True
    reselect_every_days: Int | None = Field(7, ge=1)
    drift_margin: Float = Field(0.5, ge=0)
    promotion_margin: Float = Field(0.05, ge=0)
    # a warm-started model is not promoted when the share of rows with missing features
    # moved by more than this from the current model's data (model.nan_policy)
    missing_share_margin: Float = Field(0.1, ge=0, le=1)
    checkpoint_every: Int = Field(5, ge=1)
    keep_versions: Int | None = Field(30, ge=1)
    lock_hours: Float = Field(24.0, gt=0)


class JobConfig(_Section):
    """One nightly job, as read from a job file by :func:`load_config`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    source: SourceConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)
    outputs: OutputsConfig
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    nightly: NightlyConfig = Field(default_factory=NightlyConfig)

    @model_validator(mode="after")
    def _check_outputs(self):
        if self.outputs.scores is None and self.outputs.format == "delta":
            raise _located([(("outputs", "scores"), (
                "null writes the scores into the source's Zarr group, which cannot hold a "
                "Delta table (format delta); give a location such as outputs.scores: "
                "'s3://my-bucket/scores-delta/'"))])
        if self.outputs.scores is None and not self.source.is_zarr:
            raise _located([(("outputs", "scores"), (
                f"null writes the scores into the source's Zarr group, but source "
                f"{self.source.uri!r} is not Zarr (format {self.source.format}); give a "
                f"location such as outputs.scores: 's3://my-bucket/scores/'"
                + (", or set source.format: zarr" if self.source.format == "auto" else "")
            ))])
        if self.outputs.storage_options is None:
            self.outputs.storage_options = copy.deepcopy(self.source.storage_options)
        return self

    def summary(self) -> dict[str, Any]:
        """The configuration as a JSON-able dict for reports; secrets stay ``{env: NAME}``."""
        return self.model_dump(mode="json")


# --- reading a job file ---------------------------------------------------------------------

def load_config(path: str | os.PathLike) -> JobConfig:
    """Read and validate a job file.

    Parameters
    ----------
    path : str or os.PathLike
        A YAML job file, e.g. ``"configs/demo.yaml"``.

    Raises
    ------
    ConfigError
        When the file is missing or is not YAML, or listing every invalid key with its
        line. Environment references in ``storage_options`` are not resolved here.
    """
    shown = os.fspath(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{shown}: a job file is at most {MAX_FILE_BYTES:,} bytes; this "
                              f"one has {size:,}. Is it the right file?")
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"job file {shown!r} not found (working directory "
                          f"{os.getcwd()}); relative paths start there") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown}: cannot read the job file: {exc}") from None

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        _check_expanded_size(shown, node)  # before anything walks the aliases' expansion
        lines, problems = _key_lines(node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{shown}: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()

    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{shown}: a job file is a mapping of keys (name: ..., source: ..., "
                          f"outputs: ...), got {got}")
    try:
        config = JobConfig.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            problems += _problem_lines(error, lines)
    if problems:
        problems.sort(key=lambda problem: problem[0])
        # `from None`: a chained ValidationError would carry the raw input into tracebacks
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ConfigError("\n".join([f"{shown}: invalid job configuration ({count}):",
                                     *(f"{shown}: {text}" for _, text in problems)])) from None
    return config


# A job file is small: these bounds refuse a hostile one quickly, in bounded memory.
MAX_FILE_BYTES = 256 * 1024
MAX_VALUES = 10_000


def _check_expanded_size(shown, node):
    """Refuse a document that expands, through its aliases, to more than ``MAX_VALUES``
    values (a "billion laughs" file of a few hundred bytes expands to billions). The walk
    stops at the bound, so it takes bounded time however the aliases nest."""
    count, stack = 0, [node] if node is not None else []
    while stack:
        current = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(
                f"{shown}: the YAML expands to more than {MAX_VALUES:,} values through its "
                "aliases (&name / *name); a job file needs a few dozen. Write the values "
                "out, or remove the aliases."
            )
        if isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                stack += (key, value)
        elif isinstance(current, yaml.SequenceNode):
            stack += current.value


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    text = f"YAML syntax error{where}: {exc.problem or exc.context}"
    if exc.context and exc.problem and exc.context_mark:
        text += f" ({exc.context} at line {exc.context_mark.line + 1})"
    if "alias" in text:
        text += "; quote values starting with *, e.g. cron: \"*/15 * * * *\""
    return text


def _key_lines(node, path=(), lines=None, problems=None, active=()):
    """The 1-based line of every key path in a composed YAML document, and the problems
    ``(line, text)`` of duplicate keys.

    Keys brought in by a merge key (``<<: *defaults``) are not listed; errors on them are
    reported at the nearest listed key.
    """
    if lines is None:
        lines, problems = {}, []
    if node is None or id(node) in active:  # empty document, or a recursive alias
        return lines, problems
    active = (*active, id(node))
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key, line = (*path, key_node.value), key_node.start_mark.line + 1
            if key_node.value in seen:
                problems.append((line, f"{_dotted(key)} (line {line}): duplicate key (first "
                                       f"at line {seen[key_node.value]}); YAML would keep "
                                       f"only this one"))
            seen[key_node.value] = lines[key] = line
            _key_lines(value_node, key, lines, problems, active)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _key_lines(item, (*path, i), lines, problems, active)
    return lines, problems


_MESSAGES = {
    "missing": "required key is missing",
    "model_type": "expected a section (a mapping of keys)",
}


def _problem_lines(error, lines) -> list[tuple[int, str]]:
    """``(line, text)`` for each problem in a pydantic error: key path, file line, message."""
    loc = tuple(error["loc"])
    if error["type"] == "job_config":
        return [_at(lines, (*loc, *key), message) for key, message in error["ctx"]["problems"]]
    if error["type"] == "extra_forbidden":
        message = _unknown_key(loc)
    else:
        message = _MESSAGES.get(error["type"], error["msg"].removeprefix("Value error, "))
        value = error.get("input")
        # built-in checks do not quote the value; ours do, where it is not a secret
        shown = (isinstance(value, str | int | float | bool) and "storage_options" not in loc
                 and error["type"] not in (*_MESSAGES, "value_error") and "got" not in message)
        if shown:
            message += f", got {value!r}"
    return [_at(lines, loc, message)]


def _at(lines, loc, message) -> tuple[int, str]:
    """``(line, "key (line N): message")``, the line of ``loc`` or of its nearest parent."""
    if loc in lines:
        return lines[loc], f"{_dotted(loc)} (line {lines[loc]}): {message}"
    for end in range(len(loc) - 1, 0, -1):
        if loc[:end] in lines:
            line = lines[loc[:end]]
            return line, f"{_dotted(loc)} (in {_dotted(loc[:end])}, line {line}): {message}"
    return 0, f"{_dotted(loc)}: {message}"


def _unknown_key(loc) -> str:
    section = JobConfig
    for key in loc[:-1]:
        field = section.model_fields.get(key) if isinstance(key, str) else None
        # a section, or an optional one (``TLSConfig | None``)
        kinds = [kind for kind in (*typing.get_args(field.annotation), field.annotation)
                 if isinstance(kind, type) and issubclass(kind, BaseModel)] if field else []
        if not kinds:
            return "unknown key"
        section = kinds[0]
    known = list(section.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}known keys: {', '.join(known)}"

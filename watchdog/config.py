"""The watchdog's settings: one YAML file, validated whole, with line-precise errors.

pydantic does the checking; ``yamlsrc`` turns each error's field path back into the line it
came from, so ``rollback-watchdog validate`` answers "config.yml:12: targets.0.primary.unit:
..." rather than a traceback. Secrets are never in this file: it names the file or environment
variable that holds each one (systemd credentials work as files), and the adapters read them.
"""

from __future__ import annotations

import copy
import difflib
import functools
import ipaddress
import re
import socket
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import promql_parser
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from watchdog import errors, matchers, model, timefmt, yamlsrc

Duration = Annotated[float, BeforeValidator(timefmt.parse_duration)]
"""Seconds, written as a Prometheus duration (``15s``, ``5m``) or a number of seconds."""

DEFAULT_STATE_DIR = Path("/var/lib/rollback-watchdog")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BasicAuth(_Strict):
    """HTTP basic auth for Prometheus; the password comes from a file or the environment."""

    username: str = Field(min_length=1)
    password_file: Path | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if (self.password_file is None) == (self.password_env is None):
            raise ValueError("give exactly one of password_file or password_env")
        return self


class TLSSettings(_Strict):
    """TLS options for an https Prometheus."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _cert_and_key(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class PrometheusSettings(_Strict):
    """Where Prometheus is and how to talk to it."""

    # false: no metrics source; the rules read as no data and only the systemd watch and
    # Alertmanager's alerts can act (a host without Prometheus)
    enabled: bool = True
    url: str = "http://127.0.0.1:9090"
    timeout: Duration = Field(default=10.0, gt=0)  # per query, including Prometheus's own
    retries: int = Field(default=3, ge=1, le=10)  # attempts per query, jittered backoff between
    bearer_token_file: Path | None = None
    bearer_token_env: str | None = None
    basic_auth: BasicAuth | None = None
    tls: TLSSettings = TLSSettings()
    allow_insecure_http: bool = False  # credentials over plain http:// to another host

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        if "@" in url.split("://", 1)[1].split("/", 1)[0]:
            # a password here would reach logs and the journal with every error
            raise ValueError("no credentials in the URL: use basic_auth or a bearer token")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _one_auth(self) -> Self:
        bearer = self.bearer_token_file is not None or self.bearer_token_env is not None
        if self.bearer_token_file is not None and self.bearer_token_env is not None:
            raise ValueError("give one of bearer_token_file or bearer_token_env, not both")
        if bearer and self.basic_auth is not None:
            raise ValueError("use a bearer token or basic_auth, not both")
        if bearer or self.basic_auth is not None:
            _no_clear_text(self.url, allow=self.allow_insecure_http, what="the credentials")
        return self


class UnitSettings(_Strict):
    """One side of a target: its systemd unit, scrape job, and what the runbook touches."""

    # a systemd unit (`x.service`); with `executor: docker`, a container's name or
    # `compose:<project>/<service>` (the target checks which)
    unit: str = Field(
        pattern=r"^(?:[A-Za-z0-9:_.@\\-]+\.service|[A-Za-z0-9][A-Za-z0-9_.\-]*|compose:[a-z0-9][a-z0-9_\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*)$"
    )
    job: str = Field(min_length=1)
    config_dir: Path | None = None  # backed up; the primary's holds the config to carry over
    unit_file: Path | None = None  # backed up (default: /etc/systemd/system/<unit>)
    binary: Path | None = None  # must exist before anything is stopped (e.g. the fallback's jar)


class VerifySettings(_Strict):
    """The runbook's verification list; defaults are its numbers."""

    timeout: Duration = Field(default=60.0, gt=0)  # for the service to answer after the start
    poll: Duration = Field(default=0.25, gt=0)
    # the profile's own checks (lavalink: track loading per source, a WebSocket session)
    identifiers: dict[str, str] = Field(default_factory=dict)
    websocket: bool = False
    port: int | None = Field(default=None, ge=1, le=65535)  # default: the URL's port
    max_memory_bytes: float = Field(default=2 * 1024**3, gt=0)
    max_cpu: float = Field(default=0.5, gt=0)  # of one core, sampled over `cpu_sample`
    cpu_sample: Duration = Field(default=0.5, gt=0)
    max_latency: Duration = Field(default=0.5, gt=0)  # each basic endpoint
    settle: Duration = Field(default=30.0, ge=0)  # retry latency/memory/CPU this long


class RunbookSettings(_Strict):
    """How the rollback is carried out for a target."""

    url: str  # the service, whichever side runs it (a profile may give a default)
    password_file: Path | None = None  # the service's own secret (sent as the profile says)
    password_env: str | None = None
    # the lavalink profile's runtime check: this command's major version, before any stop
    java_command: list[str] | None = None
    min_java: int = 17
    carry_config: str | None = None  # a file copied to the fallback's config_dir if it has none
    job_timeout: Duration = Field(default=90.0, gt=0)  # each systemd start/stop job
    on_fallback_failure: Literal["restore_primary", "leave"] = "restore_primary"
    resume_within: Duration = Field(default=900.0, ge=0)  # resume an interrupted run if younger
    step_pause: Duration = Field(default=0.0, ge=0)  # drills and tests: pause in each step
    verify: VerifySettings = VerifySettings()
    # how the switch survives a reboot: enable/disable the unit files (as root), or a flag file
    # both units check with ConditionPathExists= (the unprivileged mode: polkit grants only
    # start/stop/restart, see packaging/)
    persistence: Literal["enable-disable", "flag-file"] = "enable-disable"
    flag_file: Path | None = None  # flag-file mode: present = the fallback runs at boot

    @field_validator("url")
    @classmethod
    def _service_url(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+", url) or "@" in url.split("/")[2]:
            raise ValueError(f"{url!r} is not an http:// or https:// URL without credentials")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give one of password_file or password_env, not both")
        if self.persistence == "flag-file" and self.flag_file is None:
            raise ValueError("persistence flag-file needs flag_file (the path both units check)")
        return self


class AfterSettings(_Strict):
    """The watch after a rollback: is the fallback healthy? (Never a switch back: an alert.)"""

    enabled: bool = True
    duration: Duration = Field(default=1800.0, gt=0)  # how long after the run
    interval: Duration = Field(default=60.0, gt=0)  # between two checks
    max_memory_growth: float = Field(default=0.25, gt=0)  # RSS growth over the watch, a fraction


class ProbeSettings(_Strict):
    """The watchdog's own synthetic probes: the profile's questions, asked as a user's client
    would, every interval, and exported for Prometheus (services rarely export their latency)."""

    enabled: bool = True
    interval: Duration = Field(default=15.0, gt=0)
    timeout: Duration = Field(default=5.0, gt=0)  # each probe; a hung service fails, never blocks
    concurrency: int = Field(default=4, ge=1, le=32)  # probes in flight at once
    websocket: bool = False  # lavalink: a WebSocket session each round
    identifiers: dict[str, str] | None = None  # per source; default: runbook.verify.identifiers
    # the profile's periodic probes (lavalink's searches hit YouTube/SoundCloud for real): less
    # often, so the host is not rate-limited
    loadtracks_interval: Duration = Field(default=60.0, gt=0)


class WatchSettings(_Strict):
    """The systemd watch: restarts and active state of both units, read over D-Bus."""

    enabled: bool = True
    interval: Duration = Field(default=5.0, gt=0)
    crash_loop_restarts: int = Field(default=3, ge=1)  # this many automatic restarts ...
    crash_loop_window: Duration = Field(default=900.0, gt=0)  # ... within this long: critical


class BaselineMetric(_Strict):
    """One metric compared with the fallback's baseline: a PromQL query of one series, where
    ``${job}`` is the side's job (the primary's now, the fallback's then), ``${target}`` the
    target's name."""

    name: str = Field(min_length=1)  # in words, e.g. "basic endpoints latency"
    unit: Literal["seconds", "bytes", "ratio", "number"] = "number"
    query: str = Field(min_length=1)
    # False: a regression of it is a warning at most (a series of the fallback's own job is a
    # fair baseline only if the fallback served then, not if it idled beside the primary)
    critical: bool = True

    def rendered(self, target: str, job: str) -> str:
        return self.query.replace("${target}", target).replace("${job}", job)


class BaselineSettings(_Strict):
    """ "Significantly worse than the Java version": the primary since warm-up against the
    fallback's own last period of service (``comparison``); no metrics: off."""

    window: Duration = Field(default=3600.0, gt=0)  # how much of each side to compare
    step: Duration = Field(default=60.0, gt=0)  # one sample per step (and one comparison)
    min_samples: int = Field(default=10, ge=3)
    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    min_effect: float = Field(default=0.7, gt=0.5, le=1)  # P(primary > baseline) at least
    quantile: float = Field(default=0.95, gt=0, le=1)
    minor_ratio: float = Field(default=1.5, gt=1)
    critical_ratio: float = Field(default=3.0, gt=1)
    metrics: list[BaselineMetric] = []
    # the instants the fallback served (``${job}``: its job, ``${primary_job}``): only those
    # are its baseline -- not the primary's own earlier run, nor a fallback idling beside it
    fallback_serving: str = (
        'max(up{job="${job}"}) == 1 unless on() max(up{job="${primary_job}"}) == 1'
    )

    def baseline_query(
        self, metric: BaselineMetric, target: str, fallback_job: str, primary_job: str
    ) -> str:
        serving = self.fallback_serving.replace("${job}", fallback_job).replace(
            "${primary_job}", primary_job
        )
        return f"({metric.rendered(target, fallback_job)}) and on() ({serving})"

    @model_validator(mode="after")
    def _ordered(self) -> BaselineSettings:
        if self.critical_ratio < self.minor_ratio:
            raise ValueError(
                f"critical_ratio {self.critical_ratio:g} is below minor_ratio "
                f"{self.minor_ratio:g}: a critical regression must be at least a minor one"
            )
        if self.min_samples * self.step > self.window:
            raise ValueError(
                f"min_samples {self.min_samples} at one per step ({self.step:g}s) never fit "
                f"in the window ({self.window:g}s)"
            )
        return self


class AlertRouting(_Strict):
    """Which of Alertmanager's alerts belong to this target. An alert whose ``rollback_target``
    label names the target always does; otherwise one of these matcher sets must match
    (default: ``{job="<primary job>"}`` and ``{target="<name>"}``, the watchdog's own label).
    Anything else is unrouted: journaled and counted, never a decision."""

    matchers: list[str] | None = None

    @field_validator("matchers")
    @classmethod
    def _parse(cls, written: list[str] | None) -> list[str] | None:
        for text in written or ():
            matchers.parse(text)  # ValueError names the set and the problem
        return written


class HealthSettings(_Strict):
    """The http profile's health endpoint: what a healthy answer is."""

    path: str = Field(default="/health", pattern=r"^/[^\s]*$")
    status: int = Field(default=200, ge=100, le=599)
    body: str | None = None  # a regular expression the body must contain (re.search)
    header: str = Field(default="Authorization", pattern=r"^[A-Za-z0-9-]+$")  # carries the secret

    @field_validator("body")
    @classmethod
    def _pattern(cls, body: str | None) -> str | None:
        if body is not None:
            try:
                re.compile(body)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return body


PROFILES = Path(__file__).parent / "profiles"
"""Each profile's package; its ``defaults.yml`` holds its config defaults and the keys only it
reads (data, not code: the settings are read before any profile is imported)."""


def profile_names() -> list[str]:
    """Every profile that ships (a package with a ``defaults.yml``)."""
    return sorted(p.parent.name for p in PROFILES.glob("*/defaults.yml"))


@functools.cache
def _profile_file(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((PROFILES / name / "defaults.yml").read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def profile_defaults(name: str) -> dict[str, Any]:
    """The config defaults of the profile ``name``; ValueError naming the known ones."""
    known = profile_names()
    if name not in known:
        raise ValueError(f"unknown profile {name!r} (known: {', '.join(known)})")
    defaults = _profile_file(name).get("defaults")
    return copy.deepcopy(defaults) if isinstance(defaults, dict) else {}


def _foreign_keys(name: str, given: dict[str, Any]) -> list[str]:
    """The keys ``given`` sets that only another profile reads."""
    found = []
    for other in profile_names():
        if other == name:
            continue
        for dotted in _profile_file(other).get("owns") or ():
            node: Any = given
            for part in str(dotted).split("."):
                node = node.get(part) if isinstance(node, dict) else None
                if node is None:
                    break
            if node is not None:
                found.append(f"{dotted} is read by the {other} profile only")
    return found


def _under(
    defaults: dict[str, Any], given: dict[str, Any], section: type[BaseModel]
) -> dict[str, Any]:
    """``given`` with ``defaults`` filled in where it says nothing. Only a settings section
    (a field whose type is a settings model) merges key by key; any other value the config
    gives -- a list, a mapping such as ``identifiers``, an explicit null -- replaces the
    default whole."""
    merged = dict(defaults)
    for key, value in given.items():
        below = merged.get(key)
        field = section.model_fields.get(key)
        inner = field.annotation if field is not None else None
        if (
            isinstance(inner, type)
            and issubclass(inner, BaseModel)
            and isinstance(value, dict)
            and isinstance(below, dict)
        ):
            merged[key] = _under(below, value, inner)
        else:
            merged[key] = value
    return merged


def manager_name(executor: str) -> str:
    """An executor's manager as the watchdog names it to people: ``systemd`` or ``Docker``."""
    return "Docker" if executor == "docker" else "systemd"


class TargetSettings(_Strict):
    """One guarded service: a primary (new, suspect) and a fallback (old, trusted)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    profile: str = "lavalink"  # what kind of service (profiles/): lavalink, http
    executor: Literal["systemd", "docker"] = "systemd"  # who switches: systemd, or Docker
    primary: UnitSettings
    fallback: UnitSettings
    rules: list[Path] = Field(min_length=1)
    presence_query: str | None = None  # default: up{job="<primary job>"}
    activation_query: str | None = None  # default: max(process_start_time_seconds{job=...})
    runbook: RunbookSettings
    health: HealthSettings = HealthSettings()  # the http profile's endpoint
    probes: ProbeSettings = ProbeSettings()
    watch: WatchSettings = WatchSettings()
    after: AfterSettings = AfterSettings()
    alerts: AlertRouting = AlertRouting()
    baseline: BaselineSettings = BaselineSettings()

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, given: Any) -> Any:
        if not isinstance(given, dict):
            return given  # pydantic says what is wrong with it
        name = given.get("profile", "lavalink")
        if not isinstance(name, str):
            return given
        defaults = profile_defaults(name)
        foreign = _foreign_keys(name, given)
        if foreign:
            raise ValueError(f"profile {name}: " + "; ".join(foreign))
        return _under(defaults, given, cls)

    @model_validator(mode="after")
    def _units_of_the_executor(self) -> Self:
        for side in (self.primary, self.fallback):
            systemd_unit = side.unit.endswith(".service") and not side.unit.startswith("compose:")
            if self.executor == "systemd" and not systemd_unit:
                raise ValueError(
                    f"unit {side.unit!r} is not a systemd unit (x.service); for containers "
                    "set executor: docker"
                )
            if self.executor == "docker" and systemd_unit:
                raise ValueError(
                    f"unit {side.unit!r} is a systemd unit, but executor is docker: name a "
                    "container, or compose:<project>/<service>"
                )
        if self.executor == "docker" and self.runbook.persistence == "flag-file":
            raise ValueError(
                "runbook.persistence flag-file is for systemd units (ConditionPathExists=); "
                "with executor: docker the restart policies persist the switch"
            )
        return self

    @property
    def rule_variables(self) -> dict[str, str]:
        """What a templated rules file may name (``${primary_job}``): this target's names."""
        return {
            "target": self.name,
            "primary_job": self.primary.job,
            "primary_unit": self.primary.unit,
            "fallback_job": self.fallback.job,
            "fallback_unit": self.fallback.unit,
        }

    @field_validator("presence_query", "activation_query")
    @classmethod
    def _promql(cls, query: str | None) -> str | None:
        if query is not None:
            try:
                promql_parser.parse(query)
            except ValueError as exc:
                raise ValueError(f"PromQL syntax error: {exc}") from None
        return query

    @property
    def presence(self) -> str:
        return self.presence_query or f'up{{job="{self.primary.job}"}}'

    @property
    def alert_matchers(self) -> tuple[matchers.MatcherSet, ...]:
        """The matcher sets that route an alert here (besides ``rollback_target``)."""
        if self.alerts.matchers is not None:
            return tuple(matchers.parse(text) for text in self.alerts.matchers)
        return (
            matchers.MatcherSet((matchers.Matcher("job", matchers.Op.EQUAL, self.primary.job),)),
            matchers.MatcherSet((matchers.Matcher("target", matchers.Op.EQUAL, self.name),)),
        )

    @property
    def probe_identifiers(self) -> dict[str, str]:
        """What the loadtracks probe asks each source for."""
        if self.probes.identifiers is not None:
            return self.probes.identifiers
        return self.runbook.verify.identifiers

    @property
    def activation(self) -> str:
        return self.activation_query or (
            f'max(process_start_time_seconds{{job="{self.primary.job}"}})'
        )


class PolicySettings(_Strict):
    """The decision policy (docs/architecture.md) with its defaults."""

    escalate_score: float = Field(default=3.0, gt=0)
    inconclusive_after: Duration = Field(default=300.0, ge=0)
    warmup: Duration = Field(default=120.0, ge=0)
    cooldown: Duration = Field(default=3600.0, ge=0)
    commit_after: Duration | None = Field(default=None, gt=0)  # off unless set

    def to_policy(self) -> model.Policy:
        return model.Policy(
            escalate_score=self.escalate_score,
            inconclusive_after=self.inconclusive_after,
            warmup=self.warmup,
            cooldown=self.cooldown,
            commit_after=self.commit_after,
        )


class SystemdSettings(_Strict):
    """Which D-Bus reaches systemd: ``system``, ``user`` or an address (``unix:path=...``)."""

    bus: str = "system"

    @field_validator("bus")
    @classmethod
    def _bus(cls, bus: str) -> str:
        if bus not in ("system", "user") and not re.match(r"^[a-z]+:", bus):
            raise ValueError(f"{bus!r}: use system, user or a D-Bus address like unix:path=...")
        return bus


class DockerSettings(_Strict):
    """Which Docker Engine switches the containers of ``executor: docker`` targets, and the
    restart policy that "enables" the fallback (Docker's "start at boot")."""

    url: str = Field(default="unix:///var/run/docker.sock", pattern=r"^(unix|tcp|https?)://")
    restart_policy: Literal["always", "unless-stopped", "on-failure"] = "unless-stopped"


NAME_PATTERN = r"^[A-Za-z0-9._@+-]{1,64}$"
"""A person's name as the API, the CLI and ``approval.approvers`` write it."""


class OperatorSettings(_Strict):
    """One person (or bot) of the operator API: the token names them, the body never does."""

    name: str = Field(pattern=NAME_PATTERN)
    token_file: Path | None = None
    token_env: str | None = None

    @model_validator(mode="after")
    def _token(self) -> Self:
        _one_secret(self.token_file, self.token_env, "token", required=True)
        return self


class ListenSettings(_Strict):
    """The watchdog's one HTTP listener (loopback by default): metrics, health, operator API."""

    host: str = "127.0.0.1"
    port: int = Field(default=9877, ge=0, le=65535)
    # a shared operator token, one identity named token_name; without any token the API is off
    token_file: Path | None = None
    token_env: str | None = None
    token_name: str = Field(default="operator", pattern=NAME_PATTERN)
    operators: list[OperatorSettings] = Field(default_factory=list)  # a token per person
    body_limit: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)  # bytes
    request_timeout: Duration = Field(default=10.0, gt=0)  # to read a request and answer it

    @model_validator(mode="after")
    def _one_token_source(self) -> Self:
        if self.token_file is not None and self.token_env is not None:
            raise ValueError("give one of token_file or token_env, not both")
        names = [o.name for o in self.operators]
        if self.token_file is not None or self.token_env is not None:
            names.append(self.token_name)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"operator names must be unique: {', '.join(repeated)} repeated")
        return self

    @property
    def api_on(self) -> bool:
        """Whether any operator token is configured (else the operator API answers 403)."""
        return bool(self.operators) or self.token_file is not None or self.token_env is not None


def _one_secret(file: Path | None, env: str | None, what: str, *, required: bool) -> None:
    """A secret comes from a file or an environment variable: at most one, maybe exactly one."""
    if file is not None and env is not None:
        raise ValueError(f"give one of {what}_file or {what}_env, not both")
    if required and file is None and env is None:
        raise ValueError(f"give {what}_file or {what}_env")


def _plain_http_url(url: str) -> str:
    """An http(s) URL with no credentials in it (they would reach logs and the journal)."""
    if not re.match(r"^https?://[^/\s@]+(/|$)", url):
        raise ValueError(f"{url!r} is not an http:// or https:// URL without credentials")
    return url


def is_loopback(url: str) -> bool:
    """Whether the URL's host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _no_clear_text(url: str, *, allow: bool, what: str) -> None:
    """Tokens never cross a network in clear: plain http:// only to this machine, unless the
    config says ``allow_insecure_http: true``."""
    if url.startswith("http://") and not allow and not is_loopback(url):
        raise ValueError(
            f"{url!r}: plain http:// to another host would send {what} in clear; "
            "use https://, or set allow_insecure_http: true"
        )


class ApprovalSettings(_Strict):
    """The approval gate: who may approve a rollback, how many must, and for how long."""

    timeout: Duration = Field(default=900.0, gt=0)  # a pending approval expires after this long
    on_timeout: Literal["deny", "proceed"] = "deny"  # what an expired approval becomes
    required_approvals: int = Field(default=1, ge=1, le=5)  # distinct approvers (2: two-person)
    # who may approve or deny: Slack user IDs or names, and the names given to the API/CLI
    approvers: list[str] = Field(default_factory=list)

    @field_validator("approvers")
    @classmethod
    def _names(cls, approvers: list[str]) -> list[str]:
        for name in approvers:
            if not re.fullmatch(r"[A-Za-z0-9._@+-]{1,64}", name):
                raise ValueError(f"{name!r} is not a user name or Slack user ID")
        return approvers

    @model_validator(mode="after")
    def _enough_approvers(self) -> Self:
        if self.approvers and self.required_approvals > len(set(self.approvers)):
            raise ValueError(
                f"required_approvals is {self.required_approvals} but only "
                f"{len(set(self.approvers))} approvers are listed"
            )
        return self


class AlertmanagerSettings(_Strict):
    """``POST /alertmanager``: the webhook receiver's bearer token and how long alerts count."""

    token_file: Path | None = None  # Alertmanager's http_config.authorization credentials
    token_env: str | None = None
    # a firing alert not delivered again (repeat) nor resolved for this long no longer counts
    forget_after: Duration = Field(default=6 * 3600.0, gt=0)
    # the most alerts kept at once, routed and unrouted each: past it, new ones are dropped
    # (counted); resolved and forgotten ones make room first
    max_alerts: int = Field(default=1000, ge=10, le=1_000_000)

    @model_validator(mode="after")
    def _token(self) -> Self:
        _one_secret(self.token_file, self.token_env, "token", required=False)
        return self


class WebhookSettings(_Strict):
    """A generic JSON webhook: each incident's message, as JSON, POSTed on every change."""

    url: str
    token_file: Path | None = None  # sent as Authorization: Bearer <token>
    token_env: str | None = None
    timeout: Duration = Field(default=10.0, gt=0)
    allow_insecure_http: bool = False  # plain http:// to another host

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        return _plain_http_url(url)

    @model_validator(mode="after")
    def _token(self) -> Self:
        _one_secret(self.token_file, self.token_env, "token", required=False)
        _no_clear_text(self.url, allow=self.allow_insecure_http, what="the incidents")
        return self


class GrafanaSettings(_Strict):
    """Grafana: an annotation for each rollback (HTTP API, a service account token)."""

    url: str
    token_file: Path | None = None
    token_env: str | None = None
    dashboard_uid: str | None = "rollback-watchdog"  # None: an organisation-wide annotation
    tags: list[str] = Field(default_factory=lambda: ["rollback-watchdog"])
    timeout: Duration = Field(default=10.0, gt=0)
    allow_insecure_http: bool = False  # plain http:// to another host

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        return _plain_http_url(url).rstrip("/")

    @model_validator(mode="after")
    def _token(self) -> Self:
        _one_secret(self.token_file, self.token_env, "token", required=True)
        _no_clear_text(self.url, allow=self.allow_insecure_http, what="the Grafana token")
        return self


class NotifySettings(_Strict):
    """Notifications beyond Slack, each optional."""

    webhooks: list[WebhookSettings] = Field(default_factory=list)
    grafana: GrafanaSettings | None = None


class SlackSettings(_Strict):
    """Slack: one message per incident, with Approve/Deny buttons when an approval is asked."""

    channel: str = Field(pattern=r"^[CGD][A-Z0-9]{2,}$")  # the channel ID (chat.update needs it)
    bot_token_file: Path | None = None  # xoxb-..., scope chat:write
    bot_token_env: str | None = None
    signing_secret_file: Path | None = None  # verifies POST /slack/interactions
    signing_secret_env: str | None = None
    socket_mode: bool = False  # take button clicks over Socket Mode (no public URL needed)
    app_token_file: Path | None = None  # xapp-..., scope connections:write (Socket Mode)
    app_token_env: str | None = None
    api_url: str = "https://slack.com/api/"
    timeout: Duration = Field(default=10.0, gt=0)  # each Web API call
    retries: int = Field(default=3, ge=0, le=10)  # per call: 429 (Retry-After), 5xx, connection
    allow_insecure_http: bool = False  # plain http:// api_url to another host (tests, proxies)

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, url: str) -> str:
        url = _plain_http_url(url)
        return url if url.endswith("/") else url + "/"

    @model_validator(mode="after")
    def _secrets(self) -> Self:
        _one_secret(self.bot_token_file, self.bot_token_env, "bot_token", required=True)
        _one_secret(
            self.signing_secret_file, self.signing_secret_env, "signing_secret", required=False
        )
        _one_secret(self.app_token_file, self.app_token_env, "app_token", required=self.socket_mode)
        _no_clear_text(self.api_url, allow=self.allow_insecure_http, what="the Slack bot token")
        return self


class ReleaseBadSettings(_Strict):
    """When the fleet calls a release bad: this many members (or this share of the group)
    rolled back for critical reasons within ``within``; either that holds is enough."""

    nodes: int | None = Field(default=3, ge=1)
    fraction: float | None = Field(default=None, gt=0, le=1)
    within: Duration = Field(default=1800.0, gt=0)

    @model_validator(mode="after")
    def _one(self) -> Self:
        if self.nodes is None and self.fraction is None:
            raise ValueError("give nodes, fraction or both")
        return self


class FleetSettings(_Strict):
    """Fleet mode: this node's targets coordinate with the group's other watchdogs through
    PostgreSQL (README, "Fleet mode"). Off unless given."""

    group: str = Field(pattern=NAME_PATTERN)  # the nodes that serve one bot (one release)
    node: str = Field(default_factory=socket.gethostname, pattern=NAME_PATTERN)
    dsn_file: Path | None = None  # a libpq connection string or URI (it holds a password)
    dsn_env: str | None = None
    release: str | None = Field(default=None, min_length=1, max_length=200)  # default: primary unit
    max_parallel: int = Field(default=1, ge=1, le=1000)  # members of the group switching at once
    lease: Duration = Field(default=30.0, ge=3)  # lost after this long without a heartbeat
    heartbeat: Duration = Field(default=10.0, gt=0)
    timeout: Duration = Field(default=3.0, gt=0)  # each call to the store
    migrate_at_start: bool = False  # else ``rollback-watchdog migrate`` first
    release_bad_when: ReleaseBadSettings = ReleaseBadSettings()
    on_bad_release: Literal["propose", "auto", "off"] = "propose"  # the rest, in waves
    wave_pause: Duration = Field(default=60.0, ge=0)  # between two waves of the rest

    @model_validator(mode="after")
    def _secrets(self) -> Self:
        _one_secret(self.dsn_file, self.dsn_env, "dsn", required=True)
        if self.heartbeat * 2 > self.lease:
            raise ValueError("heartbeat must be at most half the lease (a late beat is not loss)")
        return self


class JournalSettings(_Strict):
    """How long the journal keeps what piles up; incidents, approvals, runs and the audit trail
    are kept for good."""

    retention: Duration = Field(default=90 * 86400.0, ge=3600)  # evaluations and alerts


class Settings(_Strict):
    """The whole configuration file."""

    mode: model.Mode = model.Mode.OBSERVE
    interval: Duration = Field(default=15.0, ge=1)
    state_dir: Path = DEFAULT_STATE_DIR
    prometheus: PrometheusSettings = PrometheusSettings()
    policy: PolicySettings = PolicySettings()
    listen: ListenSettings = ListenSettings()
    systemd: SystemdSettings = SystemdSettings()
    docker: DockerSettings = DockerSettings()  # for targets with executor: docker
    approval: ApprovalSettings = ApprovalSettings()
    alertmanager: AlertmanagerSettings = AlertmanagerSettings()
    slack: SlackSettings | None = None
    notify: NotifySettings = NotifySettings()
    journal: JournalSettings = JournalSettings()
    fleet: FleetSettings | None = None
    targets: list[TargetSettings] = Field(min_length=1)

    @field_validator("interval")
    @classmethod
    def _whole_seconds(cls, interval: float) -> float:
        if interval != int(interval):
            raise ValueError("must be a whole number of seconds (Prometheus steps are)")
        return interval

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, targets: list[TargetSettings]) -> list[TargetSettings]:
        names = [t.name for t in targets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"target names must be unique: {', '.join(duplicates)} repeated")
        return targets

    @model_validator(mode="after")
    def _approvers_for_approve_mode(self) -> Self:
        if self.mode is model.Mode.APPROVE and not self.approval.approvers:
            raise ValueError("mode approve needs approval.approvers: who may approve a rollback")
        return self

    def target(self, name: str | None) -> TargetSettings:
        """The named target, or the only one; ``ConfigError`` if that is ambiguous."""
        if name is None:
            if len(self.targets) == 1:
                return self.targets[0]
            names = ", ".join(t.name for t in self.targets)
            raise errors.ConfigError(f"several targets ({names}): choose one with --target")
        for target in self.targets:
            if target.name == name:
                return target
        names = ", ".join(t.name for t in self.targets)
        raise errors.ConfigError(f"no target named {name!r} (targets: {names})")


def load(path: Path) -> Settings:
    """Read and validate a config file; relative paths in it are relative to the file."""
    document = yamlsrc.load_file(path, error=errors.ConfigError)
    if not isinstance(document.value, dict):
        raise errors.ConfigError(f"{path}:1: a config file must be a mapping of settings")
    return parse(document, base=path.parent)


def parse(document: yamlsrc.Document, *, base: Path) -> Settings:
    """Validate a parsed document; every problem is reported with its line."""
    try:
        settings = Settings.model_validate(document.value)
    except ValidationError as exc:
        raise errors.ConfigError(_describe(exc, document)) from None
    return _resolve_paths(settings, base)


def _describe(exc: ValidationError, document: yamlsrc.Document) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        location: tuple[str | int, ...] = tuple(error["loc"])
        field = ".".join(str(part) for part in location) or "(top level)"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field" + _did_you_mean(location)
        elif error["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{document.where(location)}: {field}: {message}")
    return "\n".join(lines)


def source_budget(settings: Settings) -> float:
    """Seconds the sources get per tick: every attempt's timeout plus the capped backoff."""
    prom = settings.prometheus
    return prom.timeout * prom.retries + 4.0 * (prom.retries - 1) + 1.0


def stale_after(settings: Settings) -> float:
    """Seconds after which a journaled evaluation is stale (``status``): three missed ticks,
    and two ticks' source budgets -- an evaluation is stamped when its tick starts, up to a
    budget before it is written, and the next may take a budget again."""
    return 3 * settings.interval + 2 * source_budget(settings)


def _did_you_mean(location: tuple[str | int, ...]) -> str:
    """``; did you mean 'interval'?`` when an unknown key is a near miss of a known one."""
    known = _fields_at(location[:-1])
    wrong = str(location[-1]) if location else ""
    close = difflib.get_close_matches(wrong, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _fields_at(location: tuple[str | int, ...]) -> list[str]:
    """The field names of the model at ``location`` in the settings (none if it is not one)."""
    at: type[BaseModel] | None = Settings
    for part in location:
        if at is None:
            return []
        if isinstance(part, int):  # an item of a list: the list's model, already found
            continue
        field = at.model_fields.get(part)
        at = _model_in(field.annotation) if field is not None else None
    return list(at.model_fields) if at is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, through ``list[...]``, ``X | None`` and ``Annotated``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for inner in typing.get_args(annotation):
        found = _model_in(inner)
        if found is not None:
            return found
    return None


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    """Every path in the settings, wherever it sits, relative to the config file's directory."""
    resolved = _resolved(settings, base)
    assert isinstance(resolved, Settings)  # noqa: S101 - a model stays the model it was
    return resolved


def _resolved(value: Any, base: Path) -> Any:
    if isinstance(value, Path):
        return value if value.is_absolute() else base / value
    if isinstance(value, BaseModel):
        update = {}
        for name in type(value).model_fields:
            field = getattr(value, name)
            new = _resolved(field, base)
            if new is not field:
                update[name] = new
        return value.model_copy(update=update) if update else value
    if isinstance(value, list):
        items = [_resolved(item, base) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value

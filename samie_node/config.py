"""One validated settings object for the whole node.

Settings come from, in rising priority: the embedded defaults below, a TOML file
(``config/samie-node.toml`` is the commented default), environment variables prefixed ``SAMIE_`` with
``__`` between sections (``SAMIE_NODE__PORT=11113``), and command-line flags. The object is built once
and passed down explicitly; no module reads global configuration.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from samie_node.errors import ConfigError
from samie_node.profiles import StructureProfile, default_profiles

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no control chars
_PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(?P<port>\d{1,5})$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration written as people write them: ``3d``, ``12h``, ``90m``, ``30s``, ``0s``, ``2w``
    (a bare number is seconds).

    Raises
    ------
    ValueError
        If ``text`` is not a non-negative number with one of those units.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"invalid duration {text!r}: a number and a unit among s, m, h, d, w (e.g. 3d, 12h, 0s)")
    return float(match[1]) * _DURATION_UNITS[match[2]]


def _duration_value(value: object) -> object:
    return parse_duration(value) if isinstance(value, str) else value


#: Seconds, written in the settings as a number or as a duration string (``"3d"``).
Duration = Annotated[float, BeforeValidator(_duration_value), Field(ge=0)]


def validate_ae_title(value: str) -> str:
    """Return ``value`` stripped if it is a valid AE title, else raise ``ValueError``."""
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(stripped):
        raise ValueError(f"invalid AE title {value!r}: 1-16 printable characters, no backslash")
    return stripped


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Strict):
    """TLS (PS3.15 secure transport) for a listener or a peer connection."""

    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = False
    minimum_version: Literal["1.2", "1.3"] = "1.2"


class Peer(_Strict):
    """A remote application entity: a destination, a PACS to retrieve from, an echo target."""

    kind: Literal["dimse"] = "dimse"
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    name: str = ""
    tls: TlsSettings | None = None
    secondary_capture: bool = False

    _check_ae = field_validator("ae_title")(lambda cls, v: validate_ae_title(v))

    @property
    def label(self) -> str:
        """The peer as ``AE@HOST:PORT``, the form used on the command line and in the index."""
        return f"{self.ae_title}@{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Peer:
        """Parse ``AE@HOST:PORT`` (IPv6 hosts in brackets).

        Raises
        ------
        ConfigError
            If ``text`` is not of that form.
        """
        match = _PEER.match(text.strip())
        if not match:
            raise ConfigError(f"expected AE@HOST:PORT, got {text!r}")
        try:
            return cls(ae_title=match["ae"], host=match["host"].strip("[]"), port=int(match["port"]), name="")
        except ValidationError as exc:
            raise ConfigError(f"invalid peer {text!r}: {exc.errors()[0]['msg']}") from exc


_DESTINATION_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class DicomwebPeer(_Strict):
    """A destination that takes results over DICOMweb STOW-RS (PS3.18) instead of C-STORE.

    ``url`` is the DICOMweb service root (the node posts to ``{url}/studies``). Authentication is HTTP
    basic (``username`` and ``password``) or a bearer token (``token`` or ``token_file``); ``ca_certificates``
    verifies an HTTPS server signed by a private CA.
    """

    kind: Literal["dicomweb"]
    name: str
    url: str
    username: str | None = None
    password: str | None = None
    token: str | None = None
    token_file: Path | None = None
    ca_certificates: Path | None = None
    secondary_capture: bool = False

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _DESTINATION_NAME.match(value):
            raise ValueError("a DICOMweb destination's name is 1-64 letters, digits, '_', '.' or '-'")
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("a DICOMweb destination's url starts with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_kind_of_auth(self) -> DicomwebPeer:
        if (self.username is None) != (self.password is None):
            raise ValueError("basic authentication needs both username and password")
        if self.username is not None and (self.token is not None or self.token_file is not None):
            raise ValueError("give basic authentication or a bearer token, not both")
        return self

    @property
    def label(self) -> str:
        """The destination as the outbox, ``resend --to`` and the metrics name it."""
        return f"{DICOMWEB_PREFIX}{self.name}"


DICOMWEB_PREFIX = "dicomweb:"

#: A result destination: a DIMSE peer (the default kind, as configs before DICOMweb wrote them) or DICOMweb.
Destination = Annotated[
    Annotated[Peer, Tag("dimse")] | Annotated[DicomwebPeer, Tag("dicomweb")],
    Discriminator(lambda v: (v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)) or "dimse"),
]


class AllowedPeer(_Strict):
    """One entry of the calling-AE allow-list; ``host`` empty means any address."""

    ae_title: str
    host: str = ""

    _check_ae = field_validator("ae_title")(lambda cls, v: validate_ae_title(v))


class NodeSettings(_Strict):
    """The listener: who we are, who may talk to us, how long we wait."""

    ae_title: str = "SAMIE_NODE"
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    tls_port: int | None = Field(default=None, ge=1, le=65535)
    tls: TlsSettings | None = None
    data_dir: Path = Path("samie-data")
    require_called_ae_title: bool = True
    allowed_peers: list[AllowedPeer] = Field(default_factory=list)
    max_associations: int = Field(default=16, ge=1, le=1000)
    max_associations_per_peer: int = Field(default=8, ge=1, le=1000)
    acse_timeout_s: float = Field(default=30.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    network_timeout_s: float = Field(default=60.0, gt=0)
    maximum_pdu_length: int = Field(default=262_144, ge=4096, le=16 * 1024 * 1024)
    fsync: bool = True

    _check_ae = field_validator("ae_title")(lambda cls, v: validate_ae_title(v))


class LimitSettings(_Strict):
    """Bounds on what one peer can make the node hold or do."""

    max_instance_bytes: int = Field(default=2 * 1024**3, ge=1024)
    max_pixels: int = Field(default=1_000_000_000, ge=1)
    max_sequence_depth: int = Field(default=16, ge=1)
    disk_floor_bytes: int = Field(default=1024**3, ge=0)


class StudySettings(_Strict):
    """When a study is complete enough to process."""

    quiet_period_s: float = Field(default=10.0, ge=0)
    poll_interval_s: float = Field(default=0.5, gt=0)


class SelectionSettings(_Strict):
    """Which instances of a study the engine looks at."""

    modalities: list[str] = Field(
        default_factory=lambda: ["CT", "MR", "US", "XC", "OP", "OT", "CR", "DX", "MG", "PT", "NM", "SM", "ES", "GM"]
    )
    skip_image_types: list[str] = Field(default_factory=lambda: ["LOCALIZER", "SCREEN SAVE", "DOSE INFO"])
    max_images_per_study: int = Field(default=2000, ge=1)


class SegmenterSettings(_Strict):
    """The Segment Anything model that makes the masks."""

    kind: Literal["litemedsam", "sam", "medsam"] = "litemedsam"
    mode: Literal["auto", "box"] = "auto"
    box: tuple[float, float, float, float] | None = None
    sam_model_type: Literal["vit_b", "vit_l", "vit_h"] = "vit_b"
    sam_checkpoint: Path | None = None
    medsam_checkpoint: Path | None = None
    points_per_side: int = Field(default=32, ge=2, le=128)
    pred_iou_thresh: float = Field(default=0.7, ge=0, le=1)
    stability_score_thresh: float = Field(default=0.85, ge=0, le=1)
    min_region_area: int = Field(default=16, ge=0)
    max_masks: int = Field(default=8, ge=1, le=256)
    batch_size: int = Field(default=8, ge=1, le=256)
    profiles: dict[str, StructureProfile] = Field(default_factory=default_profiles)

    @field_validator("profiles", mode="before")
    @classmethod
    def _profiles_over_defaults(cls, value: Any) -> Any:
        """A profile in the file changes only the thresholds it names; the other profiles stay, and a new
        modality's profile starts from ``default``."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {name: p.model_dump() for name, p in default_profiles().items()}
        for name in sorted(value, key=lambda n: n != "default"):
            given = value[name]
            if isinstance(given, dict):
                merged[name] = {**merged.get(name, merged["default"]), **given}
            else:
                merged[name] = given
        return merged

    @model_validator(mode="after")
    def _sam_needs_checkpoint(self) -> SegmenterSettings:
        if self.kind == "sam" and self.sam_checkpoint is None:
            raise ValueError("segmenter.kind = 'sam' needs segmenter.sam_checkpoint (nothing is downloaded)")
        if self.kind == "medsam" and self.medsam_checkpoint is None:
            raise ValueError(
                "segmenter.kind = 'medsam' needs segmenter.medsam_checkpoint, the medsam_vit_b.pth you provide "
                "(nothing is downloaded)"
            )
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (x1 > x0 and y1 > y0):
                raise ValueError("segmenter.box must be x0,y0,x1,y1 with x1 > x0 and y1 > y0")
        if "default" not in self.profiles:
            raise ValueError("segmenter.profiles needs a 'default' profile (modalities without their own)")
        return self


class ClassifierSettings(_Strict):
    """The optional classifier; with no checkpoint the node segments and says no class was made."""

    checkpoint: Path | None = None


class EngineSettings(_Strict):
    """Where the models run, and how studies share them.

    ``backend = "local"`` runs the models in the node's process; ``"ray"`` runs them in Ray actors (the
    ``ray`` extra), on this machine (``ray_address = ""``) or on a cluster (``"auto"``, ``"HOST:PORT"`` or
    ``"ray://HOST:PORT"``). Either way studies are cut into chunks of ``chunk_images`` images, and the chunk
    that runs next belongs to the study with the fewest images left, so a small study never waits for a
    large one to finish.
    """

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    torch_threads: int = Field(default=0, ge=0)
    backend: Literal["local", "ray"] = "local"
    ray_address: str = ""
    workers: int = Field(default=1, ge=1, le=1024)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    ray_object_store_mb: int = Field(default=0, ge=0)
    chunk_images: int = Field(default=2, ge=1, le=1024)
    max_studies_in_flight: int = Field(default=8, ge=1, le=1000)
    max_chunk_attempts: int = Field(default=3, ge=1, le=100)
    reconnect_interval_s: float = Field(default=10.0, gt=0)
    runtime: Literal["openvino", "torch"] = "openvino"
    cache_dir: Path | None = None


class OutputSettings(_Strict):
    """What the node writes back for each study."""

    sr: bool = True
    keep_empty_frames: bool = True
    max_overlays: int = Field(default=8, ge=1, le=1000)
    max_segments: int = Field(default=20, ge=1, le=100)
    manufacturer: str = "samie-node"
    series_number_seg: int = 9901
    series_number_sr: int = 9902
    series_number_sc: int = 9903


class PromptSettings(_Strict):
    """Annotations (TID 1500 SRs, presentation states) drawn on a study's images, answered as box prompts."""

    enabled: bool = True
    series_number_seg: int = 9904
    series_number_sr: int = 9905
    retrieve_from: str | None = None
    retrieve_method: Literal["move", "get"] = "move"
    retrieve_timeout_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _retrieve_peer(self) -> PromptSettings:
        if self.retrieve_from is not None:
            try:
                Peer.parse(self.retrieve_from)
            except ConfigError as exc:
                raise ValueError(f"prompts.retrieve_from: {exc}") from exc
        return self


class SendSettings(_Strict):
    """How results travel back to the PACS."""

    destinations: list[Destination] = Field(default_factory=list)
    return_to_caller: bool = False
    return_port: int | None = Field(default=None, ge=1, le=65535)
    calling_ae_title: str | None = None
    max_attempts: int = Field(default=12, ge=1)
    backoff_initial_s: float = Field(default=2.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)

    def peer(self, text: str) -> Peer:
        """The configured DIMSE destination named ``AE@HOST:PORT`` (with its TLS and options), else that peer
        as parsed.

        Raises
        ------
        ConfigError
            If ``text`` is not of that form.
        """
        wanted = Peer.parse(text)
        return next(
            (peer for peer in self.destinations if isinstance(peer, Peer) and peer.label == wanted.label), wanted
        )

    def destination(self, text: str) -> Peer | DicomwebPeer:
        """A destination as the outbox and ``resend --to`` name it: ``dicomweb:NAME`` for a configured
        DICOMweb destination, else ``AE@HOST:PORT`` as :meth:`peer` reads it.

        Raises
        ------
        ConfigError
            If ``text`` names no configured DICOMweb destination or is not ``AE@HOST:PORT``.
        """
        if text.startswith(DICOMWEB_PREFIX):
            for peer in self.destinations:
                if isinstance(peer, DicomwebPeer) and peer.label == text:
                    return peer
            raise ConfigError(f"no DICOMweb destination named {text.removeprefix(DICOMWEB_PREFIX)!r} is configured")
        return self.peer(text)


class HttpSettings(_Strict):
    """The node's web face: operator console, ``/metrics``, ``/healthz``, ``/readyz`` and STOW-RS in.

    Read-only pages are open to whoever reaches ``host:port`` (loopback by default); actions that change
    state and STOW-RS need the token (``Authorization: Bearer``, or the console's login form).
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    token: str | None = Field(default=None, min_length=16)
    token_file: Path | None = None
    show_phi: bool = False
    tls: bool = False
    max_request_bytes: int = Field(default=4 * 1024**3, ge=1024)

    @model_validator(mode="after")
    def _one_token(self) -> HttpSettings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give http.token or http.token_file, not both")
        return self


class RetentionSettings(_Strict):
    """What the cleaner removes, and when, so that the disk never fills.

    Never removed, whatever these say: studies receiving, ready or processing; results not yet delivered
    to every destination (pending or retrying); studies a running ``resend`` or ``retrieve`` holds.
    """

    enabled: bool = True
    keep_delivered: Duration = 3 * 86400.0
    keep_failed: Duration = 14 * 86400.0
    keep_outbox: Duration = 7 * 86400.0
    emergency_margin_bytes: int = Field(default=4 * 1024**3, ge=0)
    pass_interval: Duration = 300.0
    max_studies_per_pass: int = Field(default=20, ge=1)
    files_per_batch: int = Field(default=200, ge=1)
    batch_pause_s: float = Field(default=0.05, ge=0)


class AuditSettings(_Strict):
    """The audit trail, separate from the operational log."""

    enabled: bool = True
    path: Path | None = None


class Settings(BaseSettings):
    """Everything the node needs, validated once at start-up."""

    model_config = SettingsConfigDict(env_prefix="SAMIE_", env_nested_delimiter="__", extra="forbid", frozen=True)

    node: NodeSettings = Field(default_factory=NodeSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    study: StudySettings = Field(default_factory=StudySettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    segmenter: SegmenterSettings = Field(default_factory=SegmenterSettings)
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    prompts: PromptSettings = Field(default_factory=PromptSettings)
    send: SendSettings = Field(default_factory=SendSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    _environment_overrides: ClassVar[bool] = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (which arrives as init kwargs), except once both are merged.
        return (env_settings, init_settings) if cls._environment_overrides else (init_settings,)

    @property
    def outbox_dir(self) -> Path:
        """Where results wait for delivery."""
        return self.node.data_dir / "outbox"

    @property
    def audit_path(self) -> Path:
        """The audit trail (JSON lines)."""
        return self.audit.path or self.node.data_dir / "audit.jsonl"


class _ExactSettings(Settings):
    """Settings validated from explicit values only (file and environment already merged in)."""

    _environment_overrides = False


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings from a TOML file, the environment and explicit overrides.

    Parameters
    ----------
    path
        A TOML file; ``None`` uses the embedded defaults only.
    overrides
        Nested values that win over file and environment (the command-line flags).

    Raises
    ------
    ConfigError
        If the file is missing or unreadable, or any value is invalid; the message names the field.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        settings = Settings(**data)
        if overrides:
            settings = _ExactSettings(**_deep_update(settings.model_dump(mode="python"), overrides))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {where}: {message}" if where else f"invalid settings: {message}") from exc
    return settings

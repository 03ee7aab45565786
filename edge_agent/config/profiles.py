"""Device profiles: how to read a device model at a firmware version, and its default rules.

A profile is a YAML file at ``firmware_profiles/<vendor>/<model>/<firmware>.yaml``::

    vendor: acme
    model: sd-2000
    firmware: ["1.4", "1.5"]        # versions covered; quoted: YAML reads 2.10 as 2.1
    title: Optical smoke detector with heat element, Modbus TCP
    protocol: modbus                # modbus | opcua | mqtt
    source: "SD-2000 manual rev C, §6 register map"   # or: invented for the simulator
    device: {poll_s: 1}             # defaults for the device entry's own keys
    connection: {unit: 1}           # defaults inside its protocol section
    points: [...]                   # the same schema as the protocol's inline points
    rules: [...]                    # default rules (edge_agent.rules.model.Rule, no device)
    simulation: {...}               # how a simulator moves each point (drivers.simulation)

A device in an agent config names one with ``profile: acme/sd-2000@1.4``; config loading
builds the device from the profile before validating it (``expand``), and lets the device
override single points by name. Profiles are searched in the config's
``profile_dirs`` first, then in the shipped ``firmware_profiles/``; only the files of the
named vendor and model are read, so a broken profile elsewhere does not stop a gateway.

Every problem is a ``Problem`` with the profile file's line, as for agent configs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    BeforeValidator,
    Field,
    SerializationInfo,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from drivers.base import DeviceBase, Frozen, PointBase, Violation, reject
from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.mqtt.config import MqttDevice, MqttPoint
from drivers.opcua.config import OpcUaDevice, OpcUaPoint
from drivers.simulation import PointSim, check_simulation
from edge_agent.config.problems import (
    Loc,
    Problem,
    ProblemsError,
    error_message,
    load_mapping,
    read_file_text,
    validation_problems,
)
from edge_agent.config.yaml_lines import Located
from edge_agent.rules.compile import RuleError, compile_rule
from edge_agent.rules.model import Rule

Protocol = Literal["modbus", "opcua", "mqtt"]

BUILTIN = Path(str(resources.files("firmware_profiles")))
"""The profiles shipped with the agent."""

SLUG = r"^[a-z0-9][a-z0-9._-]{0,63}$"
FIRMWARE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")
REF = re.compile(r"^(?P<vendor>[^/@\s]+)/(?P<model>[^/@\s]+)@(?P<firmware>[^/@\s]+)$")

DEVICE_MODELS: dict[str, type[DeviceBase]] = {
    "modbus": ModbusDevice,
    "opcua": OpcUaDevice,
    "mqtt": MqttDevice,
}
PointConfig = ModbusPoint | OpcUaPoint | MqttPoint
"""A profile's point: the point model of the profile's protocol."""
P = TypeVar("P", bound=PointBase)
_POINT_LISTS: dict[str, TypeAdapter[list[Any]]] = {
    "modbus": TypeAdapter(Annotated[list[ModbusPoint], Field(min_length=1)]),
    "opcua": TypeAdapter(Annotated[list[OpcUaPoint], Field(min_length=1)]),
    "mqtt": TypeAdapter(Annotated[list[MqttPoint], Field(min_length=1)]),
}
_ANY_POINTS: TypeAdapter[list[Any]] = TypeAdapter(
    Annotated[list[dict[str, Any]], Field(min_length=1)]
)
_PLACEHOLDERS: dict[str, dict[str, object]] = {
    "modbus": {"host": "127.0.0.1"},
    "opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"},
    "mqtt": {"url": "mqtt://127.0.0.1:1883", "topic": "profile/check"},
}
"""What a site supplies (the device's address), filled in to check a profile's device and
connection defaults on their own; its points are already checked, and are not again."""
RESERVED = frozenset({"id", "points", "profile", *DEVICE_MODELS})
"""Device keys a profile's ``device:`` defaults may not set."""


def number_firmware_message(value: float, written: str | None = None) -> str:
    """Why a firmware version written as a number is refused, and what to write: the text
    as the file has it (``2.10``), not as YAML read it (2.1)."""
    return (
        f"a firmware version must be a quoted string, not the number {value!r}: "
        f'YAML reads 2.10 as 2.1, so write "{written or value}" with the quotes'
    )


def _firmware(value: object) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(number_firmware_message(value))
    if isinstance(value, str) and not FIRMWARE.match(value):
        raise ValueError(f"{value!r}: letters, digits and . _ + - (e.g. 2.10, 3.1.4-rc2)")
    return value


Firmware = Annotated[str, BeforeValidator(_firmware)]


class Profile(Frozen):
    vendor: str = Field(pattern=SLUG, description="lower case, as the folder name")
    model: str = Field(pattern=SLUG, description="lower case, as the folder name")
    firmware: list[Firmware] = Field(min_length=1, description="versions this map is right for")
    title: str = Field(min_length=1)
    protocol: Protocol
    source: str = Field(
        min_length=1, description='manual name and section, or "invented for the simulator"'
    )
    device: dict[str, Any] = Field(default_factory=dict, description="device key defaults")
    connection: dict[str, Any] = Field(
        default_factory=dict, description="defaults inside the protocol section"
    )
    points: list[PointConfig] = Field(min_length=1, description="as the protocol's points")
    rules: list[Rule] = Field(default_factory=list)
    simulation: dict[str, PointSim] = Field(default_factory=dict)

    @field_validator("points", mode="wrap")
    @classmethod
    def _protocol_points(cls, value: object, _: object, info: ValidationInfo) -> list[Any]:
        """Each point validated once, as its protocol's point model (a Modbus profile's
        points are ModbusPoints); a device built from the profile takes them as they are."""
        protocol = info.data.get("protocol")
        if protocol is None:  # wrong, and reported: no point model to check them against
            return _ANY_POINTS.validate_python(value)
        return _POINT_LISTS[protocol].validate_python(value)

    @field_serializer("points")
    def _points_as_written(
        self, points: list[PointConfig], info: SerializationInfo
    ) -> list[dict[str, Any]]:
        """A point dumps with the keys the profile gives, as ``profiles show`` prints it."""
        return [p.model_dump(mode=info.mode, exclude_unset=True) for p in points]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[Violation] = []
        for key in self.device:
            if key in RESERVED:
                where = "the device entry" if key == "id" else "its own section"
                message = f"{key} is not a default a profile can give ({where} sets it)"
                problems.append((("device", key), message, key))
        if len(set(self.firmware)) != len(self.firmware):
            problems.append((("firmware",), "a version is listed twice", self.firmware))
        problems += self._device_problems()
        names = self.point_names
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.device is not None:
                message = "a profile's rules apply to its devices: leave device out"
                problems.append((("rules", i, "device"), message, rule.device))
            if rule.id in seen:
                message = f"rule id {rule.id!r} is already used by rules[{seen[rule.id]}]"
                problems.append((("rules", i, "id"), message, rule.id))
            seen.setdefault(rule.id, i)
            try:
                compile_rule(rule, "profile-check", frozenset(names), ("rules", i), "config")
            except RuleError as exc:
                problems.append((exc.loc, exc.message, None))
        for key, message in check_simulation(self.simulation, names):
            problems.append((("simulation", key), message, key))
        reject(type(self).__name__, problems, "profile")
        return self

    def _device_problems(self) -> list[Violation]:
        """Check the defaults, and the points together (names unique, each fits one read),
        as a device would be built from them, at profile locs."""
        sample: dict[str, Any] = {
            "id": "{id}" if "id_from" in self.connection else "profile-check",
            self.protocol: {**_PLACEHOLDERS[self.protocol], **self.connection},
            **{k: v for k, v in self.device.items() if k not in RESERVED},
            "points": self.points,
        }
        try:
            DEVICE_MODELS[self.protocol].model_validate(sample)
        except ValidationError as exc:
            out: list[Violation] = []
            for err in exc.errors():
                loc: Loc = tuple(err["loc"])
                if loc and loc[0] == self.protocol:
                    loc = ("connection", *loc[1:])
                elif loc and loc[0] not in ("points",):
                    loc = ("device", *loc)
                out.append((loc, error_message(err), err.get("input")))
            return out
        return []

    @property
    def key(self) -> str:
        return f"{self.vendor}/{self.model}"

    def ref(self, firmware: str | None = None) -> str:
        return f"{self.key}@{firmware or self.firmware[0]}"

    @property
    def point_names(self) -> list[str]:
        return [p.name for p in self.points]

    def points_as(self, model: type[P]) -> list[P]:
        """The points, typed as ``model``: this profile's point model (TypeError if not)."""
        typed: list[P] = [p for p in self.points if isinstance(p, model)]
        if len(typed) != len(self.points):
            raise TypeError(f"{self.ref()} is a {self.protocol} profile, not {model.__name__}s")
        return typed


@dataclass(frozen=True, slots=True)
class LoadedProfile:
    profile: Profile
    path: Path

    @property
    def file(self) -> str:
        return str(self.path)


class ProfileError(ProblemsError):
    """A profile could not be used; ``problems`` says where and why."""


def parse_ref(ref: str) -> tuple[str, str, str]:
    """``(vendor, model, firmware)`` of ``vendor/model@firmware``; ValueError if malformed."""
    m = REF.match(ref.strip())
    if m is None:
        raise ValueError(f"{ref!r}: expected vendor/model@firmware, e.g. acme/sd-2000@1.4")
    return m["vendor"], m["model"], m["firmware"]


def load_profile(path: Path, name: str | None = None) -> LoadedProfile:
    """Read and check one profile file; ProfileError with file:line problems."""
    shown = name or str(path)
    text = read_file_text(path, shown, ProfileError)
    located, problems = load_mapping(text, shown, ProfileError)
    try:
        profile = Profile.model_validate(located.data)
    except ValidationError as exc:
        raise ProfileError(
            problems + [_as_written(p, located) for p in validation_problems(exc, shown, located)]
        ) from None
    parts = path.parts
    vendor, model, stem = parts[-3], parts[-2], path.stem
    where = [
        (("vendor",), profile.vendor, vendor, "the vendor folder"),
        (("model",), profile.model, model, "the model folder"),
    ]
    for loc, got, want, what in where:
        if got != want:
            message = f"{got!r} is not {what} {want!r}"
            problems.append(Problem.at(shown, located, loc, message))
    if stem not in profile.firmware:
        message = f"the file is named {stem}.yaml, but {stem!r} is not among the versions listed"
        problems.append(Problem.at(shown, located, ("firmware",), message))
    if problems:
        raise ProfileError(problems)
    return LoadedProfile(profile, path)


def _as_written(problem: Problem, located: Located) -> Problem:
    """A number given as a firmware version, advised with the text the file has."""
    data = located.data.get("firmware") if isinstance(located.data, dict) else None
    if not problem.field.startswith("firmware[") or not isinstance(data, list):
        return problem
    index = int(problem.field.removeprefix("firmware[").rstrip("]"))
    value = data[index] if index < len(data) else None
    written = located.number_text(("firmware", index))
    if written is None or not isinstance(value, int | float):
        return problem
    return replace(problem, message=number_firmware_message(value, written))


class ProfileLibrary:
    """Profiles found in ``dirs`` (searched in order), then the shipped ones."""

    def __init__(self, dirs: Iterable[Path] = (), *, builtin: bool = True) -> None:
        self.dirs = [*dirs, *([BUILTIN] if builtin else [])]

    def files(self) -> list[Path]:
        """Every profile file, in search order."""
        return [f for d in self.dirs for f in sorted(d.glob("*/*/*.yaml"))]

    def find(self, ref: str) -> LoadedProfile:
        """The profile covering ``vendor/model@firmware``; ProfileError says why not."""
        try:
            vendor, model, firmware = parse_ref(ref)
        except ValueError as exc:
            raise ProfileError([Problem("(profile)", 1, "profile", str(exc))]) from None
        broken: list[Problem] = []
        versions: list[str] = []
        for d in self.dirs:
            for path in sorted((d / vendor / model).glob("*.yaml")):
                try:
                    loaded = load_profile(path)
                except ProfileError as exc:
                    if path.stem == firmware:  # the file meant for this version: say why
                        raise
                    broken += exc.problems
                    continue
                if firmware in loaded.profile.firmware:
                    return loaded
                versions += loaded.profile.firmware
        if broken:  # one of these may have been meant to cover it
            raise ProfileError(broken)
        if versions:
            known = ", ".join(sorted(set(versions)))
            message = f"no profile of {vendor}/{model} covers firmware {firmware} (known: {known})"
        else:
            models = sorted({f"{p.parts[-3]}/{p.parts[-2]}" for p in self.files()})
            message = f"no profile {vendor}/{model}; known: {', '.join(models) or 'none'}"
        raise ProfileError([Problem("(profile)", 1, "profile", message)])

    def load_all(self) -> tuple[list[LoadedProfile], list[Problem]]:
        """Every profile that loads, and every problem of those that do not."""
        loaded: list[LoadedProfile] = []
        problems: list[Problem] = []
        for d in self.dirs:
            covered: dict[str, Path] = {}  # a later folder may shadow; one folder may not twice
            for path in sorted(d.glob("*/*/*.yaml")):
                try:
                    lp = load_profile(path)
                except ProfileError as exc:
                    problems += exc.problems
                    continue
                for fw in lp.profile.firmware:
                    ref = lp.profile.ref(fw)
                    if ref in covered:
                        message = f"{ref} is also covered by {covered[ref]}"
                        problems.append(Problem(str(path), 1, "firmware", message))
                    covered.setdefault(ref, path)
                loaded.append(lp)
        return loaded, problems


def describe(profiles: Sequence[LoadedProfile]) -> list[dict[str, object]]:
    """One line of facts per profile, for ``edge-agent profiles list``."""
    return [
        {
            "ref": lp.profile.ref(),
            "vendor": lp.profile.vendor,
            "model": lp.profile.model,
            "firmware": list(lp.profile.firmware),
            "protocol": lp.profile.protocol,
            "title": lp.profile.title,
            "points": len(lp.profile.points),
            "rules": len(lp.profile.rules),
            "source": lp.profile.source,
            "file": lp.file,
        }
        for lp in profiles
    ]

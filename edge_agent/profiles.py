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
    simulation: {...}               # how a simulator moves each point (drivers.simulated.dynamics)

A device in an agent config names one with ``profile: acme/sd-2000@1.4``; the loader
(``edge_agent.config.loader``) builds the device from the profile before validating it,
and lets the device override single points by name. Profiles are searched in the config's
``profile_dirs`` first, then in the shipped ``firmware_profiles/``; only the files of the
named vendor and model are read, so a broken profile elsewhere does not stop a gateway.

Every problem is a ``Problem`` with the profile file's line, as for agent configs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BeforeValidator, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from drivers.base import DeviceBase, Frozen
from drivers.modbus.config import ModbusDevice
from drivers.mqtt.config import MqttDevice
from drivers.opcua.config import OpcUaDevice
from drivers.simulated.dynamics import PointSim, check_simulation
from edge_agent.config.loader import Problem, field_path
from edge_agent.config.models import DeviceProfile
from edge_agent.config.yaml_lines import YamlSyntaxError, line_of, load_located
from edge_agent.rules.compile import RuleError, compile_rule
from edge_agent.rules.model import Rule

Loc = tuple[str | int, ...]
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
_PLACEHOLDERS: dict[str, dict[str, object]] = {
    "modbus": {"host": "127.0.0.1"},
    "opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"},
    "mqtt": {"url": "mqtt://127.0.0.1:1883", "topic": "profile/check"},
}
"""What a site supplies (the device's address), filled in to check a profile on its own."""
RESERVED = frozenset({"id", "points", "profile", *DEVICE_MODELS})
"""Device keys a profile's ``device:`` defaults may not set."""


def _firmware(value: object) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f"a firmware version must be a quoted string, not the number {value!r}: "
            f'YAML reads 2.10 as 2.1, so write "{value}" with the quotes the manual shows'
        )
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
    points: list[dict[str, Any]] = Field(min_length=1)
    rules: list[Rule] = Field(default_factory=list)
    simulation: dict[str, PointSim] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[tuple[Loc, str, object]] = []
        for key in self.device:
            if key in RESERVED:
                where = "the device entry" if key == "id" else "its own section"
                message = f"{key} is not a default a profile can give ({where} sets it)"
                problems.append((("device", key), message, key))
        if len(set(self.firmware)) != len(self.firmware):
            problems.append((("firmware",), "a version is listed twice", self.firmware))
        problems += self._device_problems()
        names = [str(p.get("name")) for p in self.points]
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
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("profile", message), loc=loc, input=value
                    )
                    for loc, message, value in problems
                ],
            )
        return self

    def _device_problems(self) -> list[tuple[Loc, str, object]]:
        """Check points and defaults as a device would be built from them, at profile locs."""
        sample: dict[str, Any] = {
            "id": "{id}" if "id_from" in self.connection else "profile-check",
            self.protocol: {**_PLACEHOLDERS[self.protocol], **self.connection},
            **{k: v for k, v in self.device.items() if k not in RESERVED},
            "points": self.points,
        }
        try:
            DEVICE_MODELS[self.protocol].model_validate(sample)
        except ValidationError as exc:
            out: list[tuple[Loc, str, object]] = []
            for err in exc.errors():
                loc: Loc = tuple(err["loc"])
                if loc and loc[0] == self.protocol:
                    loc = ("connection", *loc[1:])
                elif loc and loc[0] not in ("points",):
                    loc = ("device", *loc)
                out.append((loc, _message(err), err.get("input")))
            return out
        return []

    @property
    def key(self) -> str:
        return f"{self.vendor}/{self.model}"

    def ref(self, firmware: str | None = None) -> str:
        return f"{self.key}@{firmware or self.firmware[0]}"

    @property
    def point_names(self) -> list[str]:
        return [str(p["name"]) for p in self.points]

    def typed_points(self) -> list[Any]:
        """The points as the protocol's point models (ModbusPoint, OpcUaPoint, MqttPoint)."""
        sample = {
            "id": "{id}" if "id_from" in self.connection else "profile-check",
            self.protocol: {**_PLACEHOLDERS[self.protocol], **self.connection},
            "points": self.points,
        }
        device = DEVICE_MODELS[self.protocol].model_validate(sample)
        return list(device.points)  # type: ignore[attr-defined]


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (misspelt, or not valid here)"
    if err["type"] == "missing":
        return "required key is missing"
    return str(err["msg"]).removeprefix("Value error, ")


@dataclass(frozen=True, slots=True)
class LoadedProfile:
    profile: Profile
    path: Path

    @property
    def file(self) -> str:
        return str(self.path)


class ProfileError(Exception):
    """A profile could not be used; ``problems`` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def parse_ref(ref: str) -> tuple[str, str, str]:
    """``(vendor, model, firmware)`` of ``vendor/model@firmware``; ValueError if malformed."""
    m = REF.match(ref.strip())
    if m is None:
        raise ValueError(f"{ref!r}: expected vendor/model@firmware, e.g. acme/sd-2000@1.4")
    return m["vendor"], m["model"], m["firmware"]


def load_profile(path: Path, name: str | None = None) -> LoadedProfile:
    """Read and check one profile file; ProfileError with file:line problems."""
    shown = name or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError([Problem(shown, 1, "(file)", str(exc))]) from None
    try:
        located = load_located(text)
    except YamlSyntaxError as exc:
        raise ProfileError([Problem(shown, exc.line, "(yaml)", exc.message)]) from None
    problems = [
        Problem(shown, line, field_path(p), "key appears twice; only one can be meant")
        for p, line in located.duplicates
    ]
    if not isinstance(located.data, dict):
        raise ProfileError([*problems, Problem(shown, 1, "(file)", "must be a mapping of keys")])
    try:
        profile = Profile.model_validate(located.data)
    except ValidationError as exc:
        for err in exc.errors():
            loc: Loc = tuple(err["loc"])
            line = line_of(located.lines, loc)
            problems.append(Problem(shown, line, field_path(loc), _message(err)))
        raise ProfileError(problems) from None
    parts = path.parts
    vendor, model, stem = parts[-3], parts[-2], path.stem
    where = [
        (("vendor",), profile.vendor, vendor, "the vendor folder"),
        (("model",), profile.model, model, "the model folder"),
    ]
    for loc, got, want, what in where:
        if got != want:
            message = f"{got!r} is not {what} {want!r}"
            problems.append(Problem(shown, line_of(located.lines, loc), field_path(loc), message))
    if stem not in profile.firmware:
        message = f"the file is named {stem}.yaml, but {stem!r} is not among the versions listed"
        problems.append(Problem(shown, line_of(located.lines, ("firmware",)), "firmware", message))
    if problems:
        raise ProfileError(problems)
    return LoadedProfile(profile, path)


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


# --- building devices from profiles (the config loader's side) -----------------------------


@dataclass(frozen=True, slots=True)
class Expansion:
    """A device entry built from its profile, and how to point errors back at the file.

    ``remap`` sends a location in the built device to the location in the file: a point
    the device overrides goes to the override, any other profile point to ``profile:``.
    """

    data: dict[str, Any]
    profile: LoadedProfile | None
    ref: str | None
    remap: dict[Loc, Loc]
    problems: list[tuple[Loc, str]]
    """Problems in the agent config, at their location there."""
    profile_problems: list[Problem]
    """Problems in the profile file the device named, at their line there."""


def expand_device(device: Mapping[str, Any], index: int, library: ProfileLibrary) -> Expansion:
    """The device entry at ``devices[index]`` with its profile applied (if it names one)."""
    here: Loc = ("devices", index)
    ref = device.get("profile")
    if ref is None:
        return Expansion(dict(device), None, None, {}, [], [])
    if not isinstance(ref, str):
        problem = ((*here, "profile"), "expected vendor/model@firmware, e.g. acme/sd-2000@1.4")
        return Expansion(dict(device), None, None, {}, [problem], [])
    try:
        loaded = library.find(ref)
    except ProfileError as exc:
        lookup = [p for p in exc.problems if p.file == "(profile)"]
        in_files = [p for p in exc.problems if p.file != "(profile)"]
        here_problems = [((*here, "profile"), p.message) for p in lookup]
        if in_files:
            files = sorted({p.file for p in in_files})
            message = f"profile {ref} has problems in {', '.join(files)}"
            here_problems.append(((*here, "profile"), message))
        return Expansion(dict(device), None, ref, {}, here_problems, in_files)
    profile = loaded.profile
    data = {k: v for k, v in device.items() if k != "profile"}
    problems: list[tuple[Loc, str]] = []
    for other in DEVICE_MODELS:
        if other != profile.protocol and other in data:
            message = f"{ref} is a {profile.protocol} device; a {other} section does not apply"
            problems.append(((*here, other), message))
    if problems:  # built anyway, the device would only repeat this in other words
        return Expansion(dict(device), None, ref, {}, problems, [])
    section = data.get(profile.protocol)
    if section is None or isinstance(section, dict):  # anything else: validation says so
        data[profile.protocol] = {**profile.connection, **(section or {})}
    for key, value in profile.device.items():
        data.setdefault(key, value)
    merged = [dict(p) for p in profile.points]
    by_name = {str(p["name"]): j for j, p in enumerate(merged)}
    remap: dict[Loc, Loc] = {(*here, "points", j): (*here, "profile") for j in range(len(merged))}
    overrides = device.get("points")
    if overrides is not None and not isinstance(overrides, list):
        problems.append(((*here, "points"), "overrides of profile points are a list"))
        overrides = []
    for k, override in enumerate(overrides or []):
        name = override.get("name") if isinstance(override, dict) else None
        if not isinstance(name, str) or not isinstance(override, dict):
            message = "an override names the profile point it changes"
            problems.append(((*here, "points", k), message))
            continue
        j = by_name.get(name)
        if j is None:
            known = ", ".join(by_name)
            message = f"{name!r} is not a point of profile {ref} (its points: {known})"
            problems.append(((*here, "points", k, "name"), message))
            continue
        merged[j].update(override)
        remap[(*here, "points", j)] = (*here, "points", k)
    data["points"] = merged
    return Expansion(data, loaded, ref, remap, problems, [])


def remap_loc(loc: Loc, remap: Mapping[Loc, Loc]) -> tuple[Loc, bool]:
    """Where ``loc`` stands in the file, and whether it fell on a profile's own points."""
    for end in range(len(loc), 0, -1):
        target = remap.get(loc[:end])
        if target is not None:
            inherited = target[-1] == "profile"
            return (target if inherited else (*target, *loc[end:])), inherited
    return loc, False


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


@dataclass(frozen=True, slots=True)
class ExpandedConfig:
    """An agent config's raw data with every ``profile:`` device built from its profile."""

    data: dict[str, Any]
    devices: dict[int, Expansion]
    """By device index: the expansion of each device that names a profile."""

    @property
    def problems(self) -> list[tuple[Loc, str]]:
        return [p for e in self.devices.values() for p in e.problems]

    @property
    def profile_problems(self) -> list[Problem]:
        return [p for e in self.devices.values() for p in e.profile_problems]

    def device_profiles(self, devices: Sequence[DeviceBase]) -> dict[str, DeviceProfile]:
        """By device id, the profile each device was built from (for the rule engine)."""
        return {
            devices[i].id: DeviceProfile(
                ref=e.ref or "", file=e.profile.file, rules=list(e.profile.profile.rules)
            )
            for i, e in self.devices.items()
            if e.profile is not None and i < len(devices)
        }

    def locate(self, loc: Loc) -> tuple[Loc, str | None] | None:
        """Where a validation error at ``loc`` belongs in the file, and the profile point it
        fell on (if it did); None for an error of a device whose profile was not found (its
        own problem says so already)."""
        if len(loc) < 2 or loc[0] != "devices" or not isinstance(loc[1], int):
            return loc, None
        expansion = self.devices.get(loc[1])
        if expansion is None:
            return loc, None
        if expansion.profile is None:
            return None
        where, inherited = remap_loc(loc, expansion.remap)
        return where, (f"{expansion.ref}: {field_path(loc[2:])}" if inherited else None)


def expand_profiles(data: Mapping[str, Any], base_dir: Path) -> ExpandedConfig:
    """Apply ``profile:`` to every device naming one, searching ``profile_dirs`` first."""
    dirs = data.get("profile_dirs")
    extra = [base_dir / str(d) for d in dirs] if isinstance(dirs, list) else []
    library = ProfileLibrary(extra)
    devices = data.get("devices")
    if not isinstance(devices, list):
        return ExpandedConfig(dict(data), {})
    built: list[Any] = []
    expansions: dict[int, Expansion] = {}
    for i, device in enumerate(devices):
        if isinstance(device, dict) and "profile" in device:
            expansion = expand_device(device, i, library)
            expansions[i] = expansion
            built.append(expansion.data)
        else:
            built.append(device)
    return ExpandedConfig({**data, "devices": built}, expansions)

"""Devices built from profiles: the step of config loading between YAML and validation.

A device entry that names ``profile: vendor/model@firmware`` gets the profile's points and
defaults; its own keys win, and its ``points:`` override single profile points by name.
The result is validated with the rest of the agent config (``loader``), and every error is
sent back to where the file says it: an overridden point to the override, any other
profile point to the device's ``profile:`` line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.base import DeviceBase
from edge_agent.config.models import DeviceProfile
from edge_agent.config.problems import Loc, Problem, field_path
from edge_agent.config.profiles import (
    DEVICE_MODELS,
    LoadedProfile,
    PointConfig,
    ProfileError,
    ProfileLibrary,
)


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
    # The profile's points are typed and checked; an override is merged onto the keys its
    # point was given, and the merged point is validated once, with the device, where the
    # override stands in the file.
    merged: list[PointConfig | dict[str, Any]] = list(profile.points)
    by_name = {p.name: j for j, p in enumerate(profile.points)}
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
        point = merged[j]
        given = point if isinstance(point, dict) else point.model_dump(exclude_unset=True)
        merged[j] = {**given, **override}
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

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Protocol

from domain.errors import Code, DomainError, InputError, LimitReached
from domain.geo import bucket_of, centre, distance_km, snap, valid_position
from domain.ids import new_id
from domain.ports import Quotas


class Source(str, Enum):
    DEVICE = "DEVICE"
    IP = "IP"


@dataclass(frozen=True)
class Whereabouts:
    """A person's known cells. Positions are snapped before they get here: no coordinates."""

    user_id: uuid.UUID
    device_cell: str | None = None
    device_at: datetime | None = None
    ip_cell: str | None = None
    ip_accuracy_km: int | None = None
    ip_at: datetime | None = None

    def current(self, now: datetime, device_fresh_for: timedelta) -> tuple[str, Source, datetime] | None:
        # A device position beats an IP position while it is fresh; after that the newer one wins.
        if self.device_cell and self.device_at and now - self.device_at <= device_fresh_for:
            return self.device_cell, Source.DEVICE, self.device_at
        options = [(self.device_at, self.device_cell, Source.DEVICE), (self.ip_at, self.ip_cell, Source.IP)]
        known = [(at, cell, source) for at, cell, source in options if at is not None and cell]
        if not known:
            return None
        at, cell, source = max(known, key=lambda o: o[0])
        return cell, source, at


class LocationRepo(Protocol):
    async def get(self, user_id: uuid.UUID) -> Whereabouts | None: ...
    # Stores the new whereabouts with the cell discovery uses (None: none) and its bucket.
    async def save(self, where: Whereabouts, cell: str | None, bucket: str | None, now: datetime) -> None: ...


class Activity(Protocol):
    async def touch(self, user_id: uuid.UUID, now: datetime) -> None: ...


class GeoIp(Protocol):
    def locate(self, ip: str) -> tuple[float, float, int] | None: ...  # latitude, longitude, accuracy km


@dataclass(frozen=True)
class LocationLimits:
    device_fresh_for: timedelta = timedelta(days=7)
    updates_per_hour: int = 30
    distinct_cells_per_day: int = 20
    max_speed_kmh: float = 1000.0  # faster than an airliner between two device positions
    enforce: bool = True  # off only for tests that play an attacker with every limit lifted
    worst_ip_accuracy_km: int = 100  # coarser answers are country centroids: ignored


@dataclass(frozen=True)
class LocationDeps:
    locations: LocationRepo
    quotas: Quotas
    geoip: GeoIp
    activity: Activity
    limits: LocationLimits


MAX_ACCURACY_M = 100_000.0
TRAVEL_SLACK_KM = 3.0


async def _store(deps: LocationDeps, where: Whereabouts, now: datetime) -> None:
    found = where.current(now, deps.limits.device_fresh_for)
    cell = found[0] if found else None
    await deps.locations.save(where, cell, bucket_of(cell) if cell else None, now)


async def update_from_device(deps: LocationDeps, user_id: uuid.UUID, lat: float, lon: float, accuracy_m: float,
                             now: datetime) -> Whereabouts:
    if not valid_position(lat, lon):
        raise InputError(Code.INVALID_LOCATION, "Latitude must be -90 to 90 and longitude -180 to 180",
                         "latitude" if not -90 <= lat <= 90 else "longitude")
    if not (0 < accuracy_m <= MAX_ACCURACY_M):  # also false for NaN
        raise InputError(Code.INVALID_LOCATION, f"Accuracy must be above 0 and at most {MAX_ACCURACY_M:.0f} m",
                         "accuracyMeters")
    cell = snap(lat, lon, accuracy_m)
    where = await deps.locations.get(user_id) or Whereabouts(user_id)
    if deps.limits.enforce:
        await _check_limits(deps, where, cell, now)
    updated = replace(where, device_cell=cell, device_at=now)
    await _store(deps, updated, now)
    await deps.activity.touch(user_id, now)
    return updated


async def _check_limits(deps: LocationDeps, where: Whereabouts, cell: str, now: datetime) -> None:
    limits = deps.limits
    if where.device_cell and where.device_at and cell != where.device_cell:
        hours = max((now - where.device_at).total_seconds() / 3600, 1e-6)
        distance = distance_km(centre(where.device_cell), centre(cell))
        # Snapping moves a position by up to a cell (1.4 km): jumps within that slack are noise. The
        # slack is granted per update, and updates are limited, so small steps cannot add up to a flight.
        if distance > limits.max_speed_kmh * hours + TRAVEL_SLACK_KM:
            raise DomainError(Code.IMPOSSIBLE_TRAVEL, "That position is too far from your last one for the time")
    # A token of its own per update: two updates in the same millisecond are two updates.
    wait = await deps.quotas.take(where.user_id, "location", limits.updates_per_hour, timedelta(hours=1), now,
                                  new_id().hex)
    if wait:
        raise LimitReached(Code.RATE_LIMITED, "Too many location updates", wait)
    # The same cell again is free; a new one counts towards the day's distinct positions.
    wait = await deps.quotas.take(where.user_id, "cells", limits.distinct_cells_per_day, timedelta(days=1), now,
                                  cell)
    if wait:
        raise LimitReached(Code.RATE_LIMITED, "Too many different positions today", wait)


async def update_from_ip(deps: LocationDeps, user_id: uuid.UUID, ip: str | None, now: datetime) -> None:
    """After a log-in or refresh: a coarse position from the address, when the address tells one."""
    await deps.activity.touch(user_id, now)
    found = deps.geoip.locate(ip) if ip else None
    if found is None:
        return  # private, reserved or unknown: the position stays as it was, never a default point
    lat, lon, accuracy_km = found
    if accuracy_km > deps.limits.worst_ip_accuracy_km or not valid_position(lat, lon):
        return
    cell = snap(lat, lon, accuracy_km * 1000)
    where = await deps.locations.get(user_id) or Whereabouts(user_id)
    if where.ip_cell == cell and where.ip_at and now - where.ip_at < timedelta(hours=1):
        return  # nothing new: spare the write
    await _store(deps, replace(where, ip_cell=cell, ip_accuracy_km=accuracy_km, ip_at=now), now)

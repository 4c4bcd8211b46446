import ipaddress
import logging
from pathlib import Path
from typing import Any

import maxminddb

log = logging.getLogger(__name__)


def packaged_database() -> Path | None:
    try:
        from geolite2 import geolite2  # ships GeoLite2 City; production points GEOIP_DATABASE at a fresh one
    except ImportError:
        return None
    return Path(geolite2.filename)


class MaxMindGeoIp:
    """Positions from a GeoLite2/GeoIP2 City database, with the database's own accuracy radius."""

    def __init__(self, path: Path | None) -> None:
        self._reader: Any = None
        if path is None or not path.exists():
            log.warning("no IP geolocation database at %s: positions come from devices only", path)
            return
        self._reader = maxminddb.open_database(str(path))

    def locate(self, ip: str) -> tuple[float, float, int] | None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if self._reader is None or not address.is_global:
            return None  # private, reserved, loopback...: no position, never a default one
        found = self._reader.get(str(address))
        location = found.get("location") if isinstance(found, dict) else None
        if not location or "latitude" not in location or "accuracy_radius" not in location:
            return None
        return float(location["latitude"]), float(location["longitude"]), int(location["accuracy_radius"])

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

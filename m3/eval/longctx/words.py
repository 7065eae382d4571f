"""Word lists for needle keys and common-words extraction: plain English, embedded so runs stay offline.

Keys are "adjective-noun" pairs as in RULER; pseudo_words() extends the list deterministically when a long
common-words list needs more distinct words than these.
"""

import random

ADJECTIVES = tuple(
    """
    able acid ancient angry bitter black bold brave brief bright broad broken busy calm careful cheap clean clear
    clever cold cool crisp cruel curly damp dark dear deep dense dizzy dry dull eager early easy empty even exact
    faint fair famous fancy fast fierce fine firm flat fresh full funny gentle giant glad golden grand great green
    happy hard harsh heavy hollow honest huge humble hungry icy idle jolly keen kind large late lazy light little
    lively long loud lucky mad mellow mighty mild modern narrow neat nervous new noble odd old open pale plain
    polite poor proud quick quiet rapid rare raw real rich rough round royal rude rusty sad safe salty sharp shiny
    short shy silent silly simple slow small smart smooth soft solid sour spicy steep stiff still strange strict
    strong sturdy sudden sweet swift tall tame tender thick thin tidy tiny tough vast warm weak wet wide wild wise
    witty young
    """.split()
)

NOUNS = tuple(
    """
    acorn actor anchor angle apple arrow attic badge bakery balloon banana barn basket beach beacon bell bench
    berry bicycle blanket bottle bridge brook bucket button cabin cable camera candle canoe canyon carpet castle
    cattle cellar chair chapel cherry chimney circle cliff clock cloud coast collar comet compass copper cottage
    crater crown crystal curtain daisy desert diamond doctor dolphin dragon drum eagle engine falcon feather fence
    field forest fountain fox garden garlic ginger glacier glove goat harbor harvest helmet hill honey horizon
    island jacket jungle kettle kitten ladder lagoon lantern lemon library lighthouse lizard magnet mango marble
    meadow melon mirror monkey mountain needle nest ocean olive onion orchard otter owl palace panda parrot
    pebble pencil pepper piano pillow pine planet pocket pond potato puzzle rabbit river robot rocket saddle
    salmon sandal school shadow shell shovel signal silver skate sparrow spider spoon squirrel stable statue
    stone storm sugar summit sunset tablet teapot temple thunder tiger timber tomato tower tractor trumpet tulip
    tunnel turtle valley violin volcano wagon walnut whale whistle willow window winter wizard wolf yacht zebra
    """.split()
)

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def pseudo_words(count: int, rng: random.Random, exclude: set[str] = frozenset()) -> list[str]:
    """`count` distinct pronounceable non-words of 2-4 syllables (e.g. "tavemo"), none in `exclude`."""
    out, seen = [], set(exclude)
    while len(out) < count:
        word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            out.append(word)
    return out

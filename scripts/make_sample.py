"""Write a small, deterministic sample corpus of social-media posts with planted duplicates.

Outputs (next to the package, so they ship as package data):
  bellm_search/data/sample_posts.jsonl       one post per line:
      {"id": "p0001", "text": "...", "user": "@user_12", "lang": "en", "likes": 17, "topic": "weather"}
  bellm_search/data/sample_posts_truth.json  the planted duplicate groups:
      [{"type": "exact"|"near", "variant": "...", "topic": "...", "ids": ["p0003", "p0117"]}, ...]

All text below was written for this file. Planted duplicates:
  * exact   a base post plus copies that collapse under social normalisation
            (RT prefix, another t.co URL, case, whitespace, repeated punctuation);
  * near    a base post plus light edits (synonym, reordered clause, emoji/hashtag added or
            removed, typo) or a real paraphrase (same meaning, different wording).
TRICKY_PAIRS are look-alikes that are NOT duplicates and appear in no truth group; every other
post is a singleton. Everything is seeded (random.Random(7)); ids follow the shuffled file order.

    python scripts/make_sample.py [--out-dir bellm_search/data]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import string
from pathlib import Path

SEED = 7
N_EXACT_BASES = 21        # base posts that get exact-ish copies
N_DOUBLE_COPIES = 4       # ... of which this many get two copies instead of one (25 copies)
N_USERS = 60

# --------------------------------------------------------------------------- data: singletons

SINGLETONS: dict[str, list[str]] = {
    "weather": [
        "Woke up to fog so thick I can't see the end of my street 🌫️",
        "Third heatwave warning this month. Stay hydrated, check on your neighbours, and keep pets indoors during the afternoon #heatwave",
        "Hail the size of marbles just hit the car park. Nobody move your car yet!",
        "First frost of the season on the allotment this morning ❄️ the kale survived, the courgettes did not",
        "Forecast says 40% chance of rain. Sky says 100%. #ukweather",
        "That thunderstorm last night knocked out power on half of Elm Road for about three hours",
        "Double rainbow over the harbour right now 🌈🌈 https://t.co/Rb7kQ2xLmw",
        "Pollen count is off the charts today, my eyes are streaming",
        "Snow day! Schools closed across the county, sledges out ⛄",
        "Why is it 18 degrees in February. I'm not complaining, just confused.",
        "@MetOfficeNews any idea when this wind is going to ease off? Bins have been rolling down the hill since 6am",
        "Sunset tonight was unreal, the whole sky went pink and orange over the fields 🌅",
        "Drought restrictions start Monday: no hosepipes, no filling paddling pools. Details here https://t.co/Hp3Wz8Lq0e #drought",
    ],
    "sports": [
        "What a comeback! Down 2-0 at half time and they win 3-2 in stoppage time ⚽🔥",
        "Ran my first half marathon today, 1:58:40. Legs are destroyed but I'm so happy #running",
        "Ref needs to explain that decision. Clear handball and nobody even checked VAR",
        "Rain delay at the cricket again. Covers on, everyone into the pavilion ☔🏏",
        "Our under-12s won the regional cup final on penalties!! Proud coach moment 🏆",
        "Transfer rumour: @CityFC closing in on a left back from the Portuguese league. Medical expected this week https://t.co/Tm4Vx9Ke2a",
        "Anyone else think the new offside rule is making games more boring?",
        "Five sets, four hours, one incredible tennis match. I need a lie down 🎾",
        "Season tickets went up by 12% again. Loyal fans getting priced out of their own club",
        "Climbing gym finally has a proper bouldering wall. Sent my first V4 tonight 🧗",
        "Injury update: captain out for six weeks with a hamstring tear. Huge blow before the derby",
        "Parkrun PB this morning, 23:12! Thanks to everyone who cheered at the last hill #parkrun",
        "Basketball final goes to double overtime and ends on a buzzer beater from half court. Sport is the best drama there is 🏀",
    ],
    "tech": [
        "Just watched the keynote. New phone has a titanium frame, a bigger battery and the same price as last year 📱 https://t.co/Kp2Lm8Qx3a",
        "Updated my laptop last night and now the wifi drops every ten minutes. Great.",
        "Open-source release of the new text editor is out today, plugins written in Lua #opensource",
        "The smartwatch can now detect sleep apnea apparently. Wild what fits on a wrist ⌚",
        "Preorders for the VR headset sold out in under an hour",
        "Anyone got recommendations for a mechanical keyboard under £80? Quiet switches please",
        "Big outage at @CloudHostCo this morning, half the internet seems to be down https://t.co/Qw8Er2Ty6u",
        "The new game console is smaller than I expected. Fits under the TV, runs silent 🎮",
        "Foldable phone review: hinge feels solid, crease is still visible, battery is mediocre",
        "Finally switched to a password manager. Should have done this years ago #security",
        "The electric scooter startup announced a model with swappable batteries and a 60 km range 🛴",
        "Tried the new AI photo editor, it removed a whole tourist from my holiday pic in two seconds",
        "Chip shortage seems to be over, graphics cards are back at normal prices",
    ],
    "food": [
        "Made sourdough for the first time and it actually rose!! 🍞 #baking",
        "Best ramen in town is the tiny place behind the station, no contest 🍜",
        "Tried the viral feta pasta. Easy, tasty, but I wouldn't call it life-changing",
        "Sunday roast with all the trimmings, Yorkshire puddings the size of my head",
        "Pro tip: salt your pasta water like the sea. Changed my life",
        "Tacos tonight: slow-cooked pork, pickled onions, lots of lime 🌮",
        "The new vegan bakery on King Street sells out of cinnamon buns by 10am every day",
        "Why does a single avocado cost £1.50 now 🥑",
        "Batch cooked five lunches for the week. Chickpea curry, rice, and a lot of smugness",
        "Strawberry season! Picked 3kg at the farm this morning 🍓",
        "Does anyone actually like coriander or are we all pretending",
        "Street food market was packed tonight. Had dumplings, churros and a mango lassi #foodie",
        "Burnt the garlic bread again. Smoke alarm is my sous chef",
    ],
    "travel": [
        "Landed in Lisbon! 28 degrees and the custard tarts are already calling 🇵🇹✈️",
        "Train cancelled, replacement bus takes three hours. Love travelling on a Sunday",
        "Hidden gem: a tiny beach north of the lighthouse, no crowds even in August https://t.co/Bc4Hx7Yn2p",
        "Passport renewal took seven weeks. Book early if you're going anywhere this summer",
        "Night train from Vienna to Venice was the best travel decision I've made #interrail",
        "Hiked to the top of the ridge at sunrise, absolutely worth the 4am alarm 🏔️",
        "Airport security queue at 5am is longer than the flight",
        "Tips for Japan in autumn? Thinking Kyoto, Nara and somewhere with hot springs, about two weeks in total and travelling by train the whole way. Budget is tight, so affordable ryokan recommendations are very welcome 🙏",
        "Lost my luggage in Frankfurt. @AirlineHelp please tell me where my suitcase is",
        "Campervan life day 6: rained every day, still smiling 🚐",
        "Visited the old town market in Krakow, the pierogi alone were worth the trip",
        "Free walking tours are the best way to see a new city. Tip your guide!",
        "Ferry to the islands is running again after the storm. Sea was rough but we made it ⛴️",
    ],
    "news": [
        "Council confirms the new library will open in March after two years of building work",
        "Census results out today: population of the region grew 4% over the decade https://t.co/Cn5Sx2Pq8r",
        "Bridge repairs on the A40 will close one lane overnight for the next two weeks",
        "Scientists report a new species of frog discovered in the cloud forest 🐸",
        "National museum announces free entry on the first Sunday of every month",
        "Postal strike called off after an agreement was reached late last night",
        "Record number of students applied to university this year, according to the admissions service",
        "Water main burst on High Street, traffic diverted and several shops closed for the day",
        "Space agency confirms the probe has entered orbit around Jupiter 🪐",
        "New recycling rules from April: food waste gets its own bin",
        "Polling stations open 7am to 10pm tomorrow, remember to bring photo ID",
        "Archaeologists unearth a Roman mosaic under a car park in the town centre",
        "Hospital opens a new emergency department wing, doubling its capacity",
    ],
    "music": [
        "New album from @the_lanterns dropped at midnight and I've had it on repeat since 🎧",
        "Festival lineup announced! Headliners look incredible this year #summerfest https://t.co/Mf6Lx3Ur8w",
        "Tickets sold out in four minutes and resale sites want £300. No thanks",
        "Learning guitar at 35. My fingers hurt but I can play three chords 🎸",
        "That jazz trio at the Blue Room on Friday was unbelievable",
        "Vinyl sales up again. My flat is now 40% records",
        "Can't stop listening to 90s trip hop this week, any recommendations?",
        "The choir concert at St Mary's raised £2,000 for the food bank 🎶",
        "Saw the band that played the tiny pub ten years ago headline an arena tonight. Unreal",
        "My year-end stats say I played the same song 412 times. No regrets",
        "Piano recital went well, only missed one note in the Chopin 🎹",
        "Whoever is playing drums in the flat upstairs at midnight, please stop",
        "Orchestra playing film scores in the park this weekend, bring a picnic",
    ],
    "movies": [
        "Just saw the new sci-fi epic in IMAX. Visuals 10/10, plot 6/10 🎬",
        "Three hour runtime and I didn't check my phone once. That's a good movie",
        "Hot take: the sequel is better than the original #movies",
        "Trailer for the animated film dropped https://t.co/Tr9Lr4Ax2b and I'm already crying",
        "Cinema snacks now cost more than the ticket. Smuggling in crisps like it's 2005",
        "Rewatched the whole trilogy this weekend, still holds up 🍿",
        "The horror film everyone's talking about? Walked out after 20 minutes. Too scary",
        "Documentary about deep sea creatures is on streaming now, absolutely fascinating",
        "Awards season predictions: best actor is a two-horse race",
        "Who decided every film needs a post-credits scene now",
        "Local indie cinema showing classic westerns every Tuesday in July 🤠",
        "That plot twist in the last ten minutes, I gasped out loud in the cinema",
        "Subtitles on at all times. I don't care what anyone says",
    ],
    "pets": [
        "My cat has decided the laptop keyboard is her new bed 🐱",
        "Adopted a rescue greyhound today. Meet Biscuit! https://t.co/Pt3Dg7Gh5k #adoptdontshop",
        "Dog refused to walk in the rain, sat down in the middle of the pavement and would not move",
        "Vet bill was £400 because the puppy ate a sock. A whole sock.",
        "The hamster escaped overnight and we found him asleep in a slipper",
        "Anyone know a good dog groomer near the park? Our spaniel looks like a mop 🐶",
        "Two cats, one sunbeam, endless negotiation ☀️",
        "Lost tabby cat near Oak Lane, answers to Pickle, very friendly. Please share!",
        "Our parrot has learned to copy the microwave beep. Send help",
        "Puppy training class graduation today, he got a certificate and everything 🎓",
        "Goldfish is 14 years old. Is that normal??",
        "Rabbit-proofing the living room = hiding every single cable",
        "Senior dog still thinks he's a puppy when the postman arrives",
    ],
    "finance": [
        "Interest rates held at 5% again, mortgage holders breathe a small sigh of relief",
        "Started a budget spreadsheet this month. Turns out I spend £90 a month on coffee ☕",
        "Markets closed lower as oil prices jumped on supply worries https://t.co/Fn4Mk8Qs1v",
        "Reminder: tax return deadline is 31 January. Don't leave it to the last night like me",
        "Pension statement arrived. Let's just say I won't be retiring early #finance",
        "Inflation fell to 3.2% last month, the lowest in two years",
        "Index funds, low fees, long time horizon. That's the whole strategy",
        "Crypto is down 15% this week and my group chat has gone very quiet 📉",
        "Bank app down again on payday, of course",
        "First house deposit saved after five years. Viewing flats this weekend! 🏠",
        "Energy bills are going down 8% from next month according to the regulator",
        "Switched banks for a £200 bonus. Took ten minutes",
        "Tech stocks led the rally today with the index up 2.1%",
    ],
    "health": [
        "10,000 steps every day for a month. Sleeping better and my back doesn't ache",
        "Flu jabs available at the pharmacy from Monday, no appointment needed 💉",
        "Cut out late-night scrolling and my sleep improved within a week. Phone charges in the kitchen now, I read a paper book for twenty minutes instead, and I wake up before the alarm most days. Highly recommend trying it",
        "Physio says my knee pain is from weak glutes. Who knew",
        "Drinking two litres of water a day is harder than it sounds",
        "Mental health check: take a walk, text a friend, drink some water 💚 #mentalhealth",
        "Study finds regular sauna use linked to lower blood pressure https://t.co/Hl6Sn3Vb8d",
        "Day 3 of no caffeine. Headache is winning",
        "Started yoga classes on Tuesday evenings, can nearly touch my toes 🧘",
        "GP appointments now bookable online, finally",
        "Hay fever season, antihistamines at the ready 🤧",
        "Blood donation today, took 40 minutes and they gave me biscuits. Go donate!",
        "Ten minutes of stretching before bed has fixed my stiff neck",
    ],
    "local": [
        "Farmers market this Saturday in the square, 9am till 1pm, local cheese and fresh bread 🧀",
        "The marathon closes Bridge Street from 7am to 2pm on Sunday, plan your route",
        "Fireworks display at Victoria Park on the 5th, gates open 6pm #bonfirenight",
        "Community litter pick on Sunday morning, gloves and bags provided. Meet at the church hall at 10am and we'll split into teams for the park, the canal path and the high street. Tea and cake afterwards for all helpers!",
        "Open mic night at The Crown every Thursday, sign up at the bar 🎤",
        "Christmas lights switch-on is next Friday with a visit from Santa 🎄",
        "Repair café at the library this weekend: bring broken toasters, lamps and bikes",
        "Summer fete raised £3,500 for the primary school, thanks to everyone who came",
        "New bike lane on Mill Road opens Monday https://t.co/Lc2Bk5Ln7x",
        "Car boot sale at the rugby club, 7am start, pitch fee £10",
        "Dog show at the village green on Saturday, categories include waggiest tail 🐕",
        "Quiz night at the community centre raised money for the new playground",
        "Pop-up skate park in the shopping centre car park all half term 🛹",
    ],
}

# --------------------------------------------------------------------------- data: near duplicates

# (topic, variant, [base post, edited or paraphrased copies...])
NEAR_GROUPS: list[tuple[str, str, list[str]]] = [
    # light edits
    ("weather", "edit", [
        "Heavy rain all afternoon and the river is already over the footpath by the bridge #flooding",
        "Heavy rain all afternoon and the river is already over the footpath near the bridge #flooding",
        "Heavy rain all afternoon and the river is already over the footpath by the bridge 🌧️ #flooding",
    ]),
    ("weather", "edit", [
        "Amber wind warning for tomorrow, gusts up to 70mph on the coast. Stay safe everyone",
        "Amber wind warning for tomorrow, gusts of up to 70mph on the coast. Stay safe everybody",
    ]),
    ("weather", "edit", [
        "Finally some sunshine after two weeks of grey skies ☀️",
        "Finally some sunshine after two weeks of gray skies",
    ]),
    ("sports", "edit", [
        "Huge win for the home side tonight, 4-1 and top of the league going into the break ⚽",
        "Massive win for the home side tonight, 4-1 and top of the league going into the break ⚽",
    ]),
    ("sports", "edit", [
        "The ref made the right call, it was never a penalty and the replay proves it",
        "The ref made the right call, it was never a penalty and the replay shows it",
    ]),
    ("sports", "edit", [
        "Training was cancelled because the pitch is frozen solid. Back on Thursday #grassroots",
        "Training was cancelled because the pitch is frozen solid. Back on Thursday",
    ]),
    ("tech", "edit", [
        "The new tablet launches on 14 March with a faster chip and a brighter screen, starting at £499 https://t.co/Tb5Nw2Lq7s",
        "The new tablet launches on 14 March with a brighter screen and a faster chip, starting at £499 https://t.co/Tb5Nw2Lq7s",
        "The new tablet launches 14 March with a faster chip and a brighter screen, starting at £499 #tech",
    ]),
    ("tech", "edit", [
        "Software update fixed the battery drain on my phone, finally lasts a full day again",
        "Software update fixed the battery drain on my phone, finaly lasts a full day again",
    ]),
    ("tech", "edit", [
        "Anyone else's smart speaker randomly start playing music at 3am? Terrifying",
        "Anyone else's smart speaker randomly start playing music at 3am? Terrifying 😱",
    ]),
    ("food", "edit", [
        "Made a huge pot of lentil soup, perfect for this cold weather 🍲",
        "Made a big pot of lentil soup, perfect for this cold weather 🍲",
    ]),
    ("food", "edit", [
        "The pizza place on Station Road does a margherita for £6 on Tuesdays and it's honestly the best in town",
        "The pizza place on Station Road does a margherita for £6 on Tuesdays and it's honestly the best in the city",
    ]),
    ("food", "edit", [
        "Baked banana bread with the three brown bananas on the counter. House smells amazing #baking",
        "Baked banana bread with the three brown bananas on the counter. House smells amazing 🍌 #baking",
    ]),
    ("travel", "edit", [
        "Our flight to Rome is delayed by four hours, spending the afternoon at the gate with a sad sandwich ✈️",
        "Our flight to Rome is delayed by four hours, so we're spending the afternoon at the gate with a sad sandwich ✈️",
    ]),
    ("travel", "edit", [
        "Top tip for Edinburgh: climb Arthur's Seat early in the morning before the crowds arrive",
        "Top tip for Edinburgh: climb Arthur's Seat early in the morning, before the crowds get there",
    ]),
    ("travel", "edit", [
        "Road trip along the coast this week, 600 miles and not a single traffic jam #roadtrip",
        "Road trip along the coast this week, 600 miles and not one traffic jam #roadtrip 🚗",
    ]),
    ("news", "edit", [
        "Council approves plans for 200 new homes on the old factory site, work to start next year",
        "Council approves plans for 200 new homes on the former factory site, work to start next year",
        "Council approves plans for 200 new homes on the old factory site, with work to start next year https://t.co/Nw8Hp3Kd6e",
    ]),
    ("news", "edit", [
        "The main road through the village will be closed for resurfacing from Monday for three weeks",
        "The main road through the village will be closed for resurfacing from Monday for 3 weeks",
    ]),
    ("news", "edit", [
        "Museum reopens after a £12 million refurbishment with a new dinosaur gallery 🦕",
        "Museum reopens after a £12 million refurbishment with a brand new dinosaur gallery 🦕",
    ]),
    ("music", "edit", [
        "Saw @nightowls live last night and they played the whole first album start to finish 🎸",
        "Saw @nightowls live last night, they played the whole first album from start to finish 🎸",
    ]),
    ("music", "edit", [
        "New single is out on Friday, the video was filmed in our hometown #newmusic",
        "New single is out on Friday, the video was shot in our hometown #newmusic",
    ]),
    ("music", "edit", [
        "This summer's festival will have a silent disco tent and free water refill stations",
        "This summer's festival will have free water refill stations and a silent disco tent",
    ]),
    ("movies", "edit", [
        "The director's cut is 40 minutes longer and honestly it's a much better film",
        "The director's cut is 40 minutes longer and honestly it's a far better film",
    ]),
    ("movies", "edit", [
        "Opening weekend box office for the superhero sequel was lower than expected 🎬",
        "Opening weekend box office for the superhero sequel was lower than expected 🎬 #boxoffice",
    ]),
    ("movies", "edit", [
        "Finally watched that film everyone recommended and I don't get the hype",
        "Finally watched that film everyone recomended and I don't get the hype",
    ]),
    ("pets", "edit", [
        "Our kitten knocked a full glass of water off the table, looked me in the eye, then did it again 😾",
        "Our kitten knocked a full glass of water off the table, stared me in the eye, then did it again 😾",
        "Our kitten knocked a full glass of water off the table, looked me in the eye, then did it again",
    ]),
    ("pets", "edit", [
        "Found a stray dog by the canal, no collar, very friendly. Taking him to the vet to check for a chip",
        "Found a stray dog by the canal, no collar, very friendly. Taking him to the vets to check for a microchip",
    ]),
    ("finance", "edit", [
        "Petrol prices hit a six-month low this week, down 9p a litre since January ⛽",
        "Petrol prices hit a six month low this week, down 9p per litre since January ⛽",
    ]),
    ("finance", "edit", [
        "Tip: move your emergency fund into an easy-access savings account, rates are over 4% right now #money",
        "Tip: move your emergency fund to an easy-access savings account, rates are above 4% right now #money",
    ]),
    ("health", "edit", [
        "New walk-in clinic opens on Park Avenue next week, open 8am to 8pm every day",
        "New walk-in clinic opens on Park Avenue next week, open every day from 8am to 8pm",
    ]),
    ("local", "edit", [
        "Lost keys found outside the bakery on Church Street, handed in at the post office 🔑",
        "Lost keys found outside the bakery on Church Street, handed into the post office 🔑",
    ]),
    # real paraphrases
    ("weather", "paraphrase", [
        "The council has issued a flood alert for the river valley, residents are advised to move valuables upstairs",
        "Flood warning in place for homes along the river tonight. If you live nearby, get your important stuff off the ground floor",
    ]),
    ("sports", "paraphrase", [
        "Our striker just signed a new three-year contract with the club 🙌",
        "He's staying! Our top scorer has agreed an extension that keeps him here for another three seasons",
    ]),
    ("tech", "paraphrase", [
        "The company unveiled its first electric pickup truck today, deliveries begin next spring",
        "First electric pickup from the carmaker was revealed this afternoon, with customers getting theirs from next spring 🛻",
    ]),
    ("food", "paraphrase", [
        "This lemon drizzle cake takes 15 minutes to prep and only needs five ingredients",
        "Quickest bake ever: lemon drizzle, five ingredients, a quarter of an hour to get it in the oven 🍋",
    ]),
    ("travel", "paraphrase", [
        "All flights out of the north terminal are grounded this morning because of a radar fault",
        "A radar problem at the airport has stopped every departure from the north terminal since early today",
    ]),
    ("news", "paraphrase", [
        "The town's oldest resident celebrated her 105th birthday with a party at the care home",
        "Happy 105th to the oldest woman in town, who marked the day with a celebration at her care home 🎂",
    ]),
    ("movies", "paraphrase", [
        "The long-awaited fantasy adaptation has been pushed back to next year",
        "Bad news for fans: the release of that fantasy book adaptation is delayed until next year",
    ]),
    ("pets", "paraphrase", [
        "My dog is terrified of the hoover and hides under the bed every time I clean",
        "Every time I get the vacuum cleaner out, the dog bolts and hides beneath the bed 🙈",
    ]),
    ("finance", "paraphrase", [
        "The supermarket chain reported record profits, up 20% on last year",
        "Record year for the grocery giant: profit climbed by a fifth compared with twelve months ago",
    ]),
    ("health", "paraphrase", [
        "Getting outside for a 20-minute walk each day can noticeably lift your mood",
        "Even a short daily walk in the fresh air, around twenty minutes, makes a real difference to how you feel 🚶",
    ]),
]

# --------------------------------------------------------------------------- data: tricky non-duplicates

# Look-alike pairs that must NOT be grouped: same words with another meaning, or the same
# topic but a different event. Each is a (topic, text) pair.
TRICKY_PAIRS: list[tuple[tuple[str, str], tuple[str, str]]] = [
    (("news", "The dog bit the man outside the bakery this morning"),
     ("news", "The man bit the dog outside the bakery this morning")),
    (("finance", "Apple shares rise 3% after strong iPhone sales https://t.co/Ap9Sh4Rs2x"),
     ("food", "Apple pie recipe: flaky crust, lots of cinnamon, serve warm 🥧")),
    (("sports", "Home team beat the visitors 3-1 in a tense derby"),
     ("sports", "Visitors beat the home team 3-1 in a tense derby")),
    (("finance", "Interest rates rise to 5.25%, the highest in fifteen years"),
     ("finance", "Interest rates fall to 4.75%, the lowest in two years")),
    (("weather", "Storm knocks out power across the north of the county tonight"),
     ("weather", "Storm knocks out power across the south of the county again, second time this week")),
    (("tech", "Python 3.13 is out with a faster interpreter #python"),
     ("pets", "A python escaped from the reptile house at the zoo this morning 🐍")),
    (("travel", "Train from Leeds to London cancelled this morning"),
     ("travel", "Train from London to Leeds cancelled this evening")),
    (("music", "I love the band but hate their new album"),
     ("music", "I hate the band but love their new album")),
    (("local", "The festival was cancelled because of the rain, not the ticket sales"),
     ("local", "The festival was cancelled because of the ticket sales, not the rain")),
    (("news", "Jaguar spotted in the Amazon rainforest for the first time in a decade"),
     ("tech", "Jaguar unveils its new electric sports car at the motor show")),
]

# --------------------------------------------------------------------------- exact-ish copies

TCO = re.compile(r"https://t\.co/\w+")


def fake_url(rng: random.Random) -> str:
    return "https://t.co/" + "".join(rng.choices(string.ascii_letters + string.digits, k=10))


def retweet(text: str, orig_user: str, rng: random.Random) -> str:
    return f"RT {orig_user}: {text}"


def new_url(text: str, orig_user: str, rng: random.Random) -> str:
    if TCO.search(text):
        return TCO.sub(fake_url(rng), text)
    return f"{text} {fake_url(rng)}"


def shout(text: str, orig_user: str, rng: random.Random) -> str:
    return text.upper()


def lower(text: str, orig_user: str, rng: random.Random) -> str:
    return text.lower()


def spacing(text: str, orig_user: str, rng: random.Random) -> str:
    return "  " + "   ".join(text.split(" ")) + " \n"


def bangs(text: str, orig_user: str, rng: random.Random) -> str:
    return re.sub(r"([!?])+", lambda m: m.group(1) * 3, text)


def retweet_new_url(text: str, orig_user: str, rng: random.Random) -> str:
    return retweet(new_url(text, orig_user, rng), orig_user, rng)


TRANSFORMS = {f.__name__: f for f in (retweet, new_url, shout, lower, spacing, bangs, retweet_new_url)}


def applicable(name: str, text: str) -> bool:
    return name != "bangs" or bool(re.search(r"[!?]", text))


# --------------------------------------------------------------------------- assembly

def exact_plan(rng: random.Random) -> list[list[str]]:
    """Transform names per exact group, every transform used 3-4 times, no repeat in a group."""
    names = list(TRANSFORMS)
    n_copies = N_EXACT_BASES + N_DOUBLE_COPIES
    while True:
        flat = (names * n_copies)[:n_copies]
        rng.shuffle(flat)
        pairs = [flat[2 * k:2 * k + 2] for k in range(N_DOUBLE_COPIES)]
        if all(a != b for a, b in pairs):
            return pairs + [[n] for n in flat[2 * N_DOUBLE_COPIES:]]


def make_post(rng: random.Random, text: str, topic: str, user: str | None = None) -> dict:
    return {"text": text, "user": user or f"@user_{rng.randint(1, N_USERS)}", "lang": "en",
            "likes": int(rng.expovariate(1 / 40)), "topic": topic}


def other_user(rng: random.Random, user: str) -> str:
    while (u := f"@user_{rng.randint(1, N_USERS)}") == user:
        pass
    return u


def build(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Posts (no ids yet) and groups as {"type", "variant", "topic", "members": [post index...]}."""
    posts: list[dict] = []
    groups: list[dict] = []

    singles = [make_post(rng, text, topic) for topic, texts in SINGLETONS.items() for text in texts]
    posts += singles

    for (topic_a, text_a), (topic_b, text_b) in TRICKY_PAIRS:
        posts += [make_post(rng, text_a, topic_a), make_post(rng, text_b, topic_b)]

    for topic, variant, texts in NEAR_GROUPS:
        start = len(posts)
        posts += [make_post(rng, text, topic) for text in texts]
        groups.append({"type": "near", "variant": variant, "topic": topic,
                       "members": list(range(start, len(posts)))})

    unused = list(range(len(singles)))
    for chosen in exact_plan(rng):
        base = rng.choice([i for i in unused if all(applicable(n, posts[i]["text"]) for n in chosen)])
        unused.remove(base)
        orig = posts[base]
        members = [base]
        for name in chosen:
            text = TRANSFORMS[name](orig["text"], orig["user"], rng)
            posts.append(make_post(rng, text, orig["topic"], other_user(rng, orig["user"])))
            members.append(len(posts) - 1)
        groups.append({"type": "exact", "variant": ",".join(chosen), "topic": orig["topic"],
                       "members": members})
    return posts, groups


def shuffled_order(rng: random.Random, n: int, groups: list[dict]) -> list[int]:
    """A seeded permutation in which no two members of one group sit next to each other."""
    group_of = {m: g for g, grp in enumerate(groups) for m in grp["members"]}
    order = list(range(n))
    while True:
        rng.shuffle(order)
        if not any(a in group_of and group_of.get(b) == group_of[a] for a, b in zip(order, order[1:])):
            return order


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=root / "bellm_search" / "data")
    args = parser.parse_args()

    rng = random.Random(SEED)
    posts, groups = build(rng)
    order = shuffled_order(rng, len(posts), groups)
    id_of = {old: f"p{pos + 1:04d}" for pos, old in enumerate(order)}

    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "sample_posts.jsonl", "w", encoding="utf-8") as fh:
        for old in order:
            fh.write(json.dumps({"id": id_of[old], **posts[old]}, ensure_ascii=False) + "\n")

    truth = [{"type": g["type"], "variant": g["variant"], "topic": g["topic"],
              "ids": sorted(id_of[m] for m in g["members"])} for g in groups]
    truth.sort(key=lambda g: g["ids"][0])
    with open(args.out_dir / "sample_posts_truth.json", "w", encoding="utf-8") as fh:
        json.dump(truth, fh, ensure_ascii=False, indent=1)
        fh.write("\n")

    n_exact = sum(g["type"] == "exact" for g in truth)
    n_near = sum(g["type"] == "near" for g in truth)
    in_groups = sum(len(g["ids"]) for g in truth)
    print(f"posts: {len(posts)}  (distinct base texts: {len(posts) - in_groups + len(truth)}, "
          f"tricky non-duplicates: {2 * len(TRICKY_PAIRS)})")
    print(f"groups: {len(truth)}  (exact: {n_exact}, near: {n_near})")
    print(f"docs in groups: {in_groups}  (copies beyond the base post: {in_groups - len(truth)})")
    print(f"wrote {args.out_dir / 'sample_posts.jsonl'} and {args.out_dir / 'sample_posts_truth.json'}")


if __name__ == "__main__":
    main()

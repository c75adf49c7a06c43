"""Pure pair maths shared by ingest, dedup, the server and evaluation: text normalisation
and hashing, shingles, pair features and the pair score."""
